"""Unit tests of the pretraining building blocks that need no encoder: schedules, EMA, masking,
matching, Sinkhorn-Knopp, augmentations, the resumable sample order, bad-scan skipping, state files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssl3d_ros.config import ConfigError
from ssl3d_ros.preprocessing import PreprocessConfig
from ssl3d_ros.scan import Scan
from ssl3d_ros.training import hierarchy, masking, schedules, state as state_io
from ssl3d_ros.training.config import config_from_dict, load_config
from ssl3d_ros.training.data import DataConfig, PretrainDataset, StepSampler, collate_samples
from ssl3d_ros.training.ema import EMATeacher, momentum_at
from ssl3d_ros.training.heads import pad_by_batch, sinkhorn_knopp
from ssl3d_ros.training.metrics import MetricsLogger
from ssl3d_ros.training.views import AugmentConfig, ViewGroupConfig, ViewMaker, crop, density_keep, transform

REPO = Path(__file__).resolve().parents[1]


def ground_and_boxes(n: int = 3000, seed: int = 0) -> Scan:
    """A small LiDAR-like scene: ground plane plus two boxes, with ring and intensity fields."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-10, 10, (n // 2, 2)), rng.normal(-1.7, 0.01, n // 2)]
    box = rng.uniform([2, 2, -1.7], [4, 3, 0.5], (n - n // 2, 3))
    pts = np.concatenate([ground, box]).astype(np.float32)
    ring = (np.arange(n) % 16).astype(np.uint16)
    return Scan(pts, {"intensity": rng.uniform(0, 1, n).astype(np.float32), "ring": ring}, intensity_scale=1.0, source=f"synthetic#{seed}")


def test_schedules():
    assert schedules.warmup_cosine(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert schedules.warmup_cosine(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert schedules.warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    mid = schedules.warmup_cosine(55, 100, 10, 1.0, 0.0)
    assert mid == pytest.approx(0.5)
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99) and momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert schedules.ramp(50, 100, 0.3, 0.7) == pytest.approx(0.5)
    assert schedules.linear(5, 10, 20, 0.0, 1.0) == 0.0 and schedules.linear(30, 10, 20, 0.0, 1.0) == 1.0


def test_ema_teacher_moves_towards_student():
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.add_(1.0)
    before = teacher.module.weight.clone()
    teacher.update(student, 0.9)
    expected = 0.9 * before + 0.1 * student.weight
    assert torch.allclose(teacher.module.weight, expected)
    teacher.update(student, 1.0)
    assert torch.allclose(teacher.module.weight, expected)


def test_sample_patches_exact_ratio_and_scores():
    batch = torch.tensor([0] * 10 + [1] * 20)
    g = torch.Generator().manual_seed(0)
    picked = masking.sample_patches(batch, 0.3, g)
    assert int(picked[batch == 0].sum()) == 3 and int(picked[batch == 1].sum()) == 6
    # with strongly peaked scores and low temperature the highest-scoring patches are chosen
    scores = torch.arange(30, dtype=torch.float32)
    picked = masking.sample_patches(batch, 0.3, g, scores=scores, temperature=0.01)
    assert picked[7:10].all() and picked[24:30].all() and int(picked.sum()) == 9
    # a scan with a single patch keeps it visible
    assert not masking.sample_patches(torch.tensor([0]), 0.9, g).any()


def test_patch_mask_masks_whole_patches():
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(2000, 3) * 10
    batch = (torch.arange(2000) >= 1000).long()
    mask, patches, patch_masked = masking.patch_mask(pos, batch, 2.0, 0.5, g)
    # every voxel of a patch shares its fate, and patches never straddle scans
    assert torch.equal(mask, patch_masked[patches.of_voxel])
    assert torch.equal(patches.batch[patches.of_voxel], batch)
    cells = torch.floor((pos - patches.offset) / 2.0).long()
    assert torch.equal(cells, patches.cell[patches.of_voxel])
    assert 0.3 < mask.float().mean() < 0.7


def test_jitter_masked_coords_keeps_visible_voxels():
    coords = torch.cat([torch.zeros(500, 1, dtype=torch.int32), torch.randint(0, 30, (500, 3), dtype=torch.int32)], 1)
    coords = torch.unique(coords, dim=0)
    masked = torch.rand(len(coords)) < 0.5
    moved, kept = masking.jitter_masked_coords(coords, masked, 2.0, torch.Generator().manual_seed(0))
    assert kept[~masked].all()
    assert torch.equal(moved[~masked], coords[~masked])
    assert not torch.equal(moved[masked], coords[masked])
    assert len(torch.unique(moved[kept], dim=0)) == int(kept.sum())  # no duplicate voxels remain


def test_match_positions_finds_same_places():
    pos = torch.rand(300, 3) * 5
    batch = torch.zeros(300, dtype=torch.long)
    perm = torch.randperm(300)
    src, dst = hierarchy.match_positions(pos, batch, pos[perm], batch, 0.5)
    assert len(src) == 300
    assert torch.allclose(torch.floor(pos[src] / 0.5), torch.floor(pos[perm][dst] / 0.5))
    # different scans never match
    src, _ = hierarchy.match_positions(pos, batch, pos, batch + 1, 0.5)
    assert len(src) == 0


def test_pad_by_batch_roundtrip():
    x = torch.randn(7, 2)
    batch = torch.tensor([1, 0, 1, 2, 0, 1, 1])
    padded, valid, slot = pad_by_batch(x, batch, 3)
    assert padded.shape == (3, 4, 2) and int(valid.sum()) == 7
    assert torch.equal(padded[batch, slot], x)


def test_sinkhorn_balances_prototypes():
    logits = torch.randn(512, 16)
    logits[:, 0] += 2.0  # a teacher that favours one prototype
    softmax_usage = torch.softmax(logits / 0.1, dim=1).mean(dim=0)
    assert softmax_usage[0] > 0.5  # plain softmax targets would collapse onto it
    q = sinkhorn_knopp(logits, 0.1, iterations=10)
    assert torch.allclose(q.sum(dim=1), torch.ones(512), atol=1e-4)
    usage = q.sum(dim=0) / 512
    assert torch.allclose(usage, torch.full((16,), 1 / 16), atol=0.02)
    assert q.argmax(dim=1).unique().numel() > 8


def test_augmentations():
    scan = ground_and_boxes()
    rng = np.random.default_rng(0)
    idx = crop(scan.points, scan.points[0], ViewGroupConfig(crop="ball", crop_points=500), rng)
    d = np.linalg.norm(scan.points - scan.points[0], axis=1)
    assert len(idx) == 500 and d[idx].max() <= np.sort(d)[499] + 1e-6
    box = crop(scan.points, np.zeros(3, np.float32), ViewGroupConfig(crop="box", crop_points=10**6, box_size=4.0), rng)
    assert np.all(np.abs(scan.points[box, :2]) <= 2.0)
    keep = density_keep(scan, AugmentConfig(beam_drop=1.0, beam_keep=(0.5, 0.5)), rng)
    rings = np.asarray(scan.fields["ring"])
    kept_rings = set(rings[keep].tolist())
    assert 0 < len(kept_rings) < 16 and not (set(rings[~keep].tolist()) & kept_rings)  # whole beams dropped
    aug = AugmentConfig(rotate_z=180, scale=(2.0, 2.0), flip_x=0.0, jitter_sigma=0.0, intensity_sigma=0.0, intensity_scale=(1, 1))
    out = transform(scan, aug, rng)
    # rotation about z and scaling by 2: z doubles, horizontal radii double
    assert np.allclose(out.points[:, 2], 2 * scan.points[:, 2], atol=1e-5)
    assert np.allclose(np.hypot(*out.points[:, :2].T), 2 * np.hypot(*scan.points[:, :2].T), atol=1e-4)
    assert transform(scan, AugmentConfig(intensity_sigma=0.1), rng).fields["intensity"] is scan.fields["intensity"]  # no scale: untouched
    noisy = transform(scan, AugmentConfig(intensity_sigma=0.1), rng, intensity_full_scale=1.0)
    assert not np.allclose(noisy.fields["intensity"], scan.fields["intensity"])
    assert noisy.fields["intensity"].min() >= 0 and noisy.fields["intensity"].max() <= 1.0


def test_views_remember_original_coordinates():
    scan = ground_and_boxes()
    maker = ViewMaker({"a": ViewGroupConfig(count=2, crop_points=1500)}, PreprocessConfig(voxel_size=0.2))
    views = maker(scan, np.random.default_rng(0))["a"]
    for view in views:
        # each voxel's origin is a place of the original scan (mean of its points, within one voxel of one)
        d = torch.cdist(view.origin, torch.from_numpy(scan.points)).min(dim=1).values
        assert float(d.max()) < 0.2 * 1.2 * 2
        # and the augmented coordinates are not the originals
    assert not torch.allclose(views[0].coord.mean(0), views[0].origin.mean(0), atol=1e-3)


class FlakySource:
    """Scans 3 and 5 are unreadable (as a corrupt file would be); scan 6 has too few points."""

    def __init__(self, n=8):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from ssl3d_ros.io import ScanReadError

        if i in (3, 5):
            raise ScanReadError(f"flaky#{i}", "corrupt")
        if i == 6:
            return Scan(np.zeros((5, 3), np.float32), {"intensity": np.zeros(5, np.float32)}, source="tiny")
        return ground_and_boxes(1200, seed=i)

    def describe(self, i):
        return f"flaky#{i}"


def test_dataset_order_is_deterministic_skips_bad_scans_and_shards():
    maker = ViewMaker({"a": ViewGroupConfig(count=1, crop_points=800)}, PreprocessConfig(voxel_size=0.2))
    ds = PretrainDataset(FlakySource(), maker, DataConfig(min_voxels=16), seed=3)
    # a permutation per epoch, every scan once
    first_epoch = [ds.scan_index(p) for p in range(8)]
    assert sorted(first_epoch) == list(range(8))
    assert [ds.scan_index(p) for p in range(8, 16)] != first_epoch
    samples = [ds[p] for p in range(8)]
    skipped = [s for sample in samples for s in sample.skipped]
    assert {d for d, _ in skipped} >= {"flaky#3", "flaky#5"} and len(skipped) >= 3
    assert all(len(s.views["a"][0].coord) >= 16 for s in samples)
    # same position, same views: resuming replays identical data
    again = ds[2]
    assert torch.equal(again.views["a"][0].coord, samples[2].views["a"][0].coord)
    batch = collate_samples(samples[:3])
    assert batch.views["a"][0].batch_size == 3 and batch.views["a"][0].coords[:, 0].max() == 2
    # two ranks see disjoint positions, together the single-rank stream
    r0, r1 = StepSampler(2, 4, 0, 0, 2), StepSampler(2, 4, 0, 1, 2)
    single = StepSampler(4, 4)
    for s in range(4):
        assert sorted(r0.positions(s) + r1.positions(s)) == single.positions(s)
    assert list(StepSampler(2, 5, start_step=3)) == [[6, 7], [8, 9]]


def test_dataset_gives_up_on_all_bad_sources():
    class Broken(FlakySource):
        def __getitem__(self, i):
            from ssl3d_ros.io import ScanReadError

            raise ScanReadError(f"b#{i}", "corrupt")

    maker = ViewMaker({"a": ViewGroupConfig()}, PreprocessConfig(voxel_size=0.2))
    ds = PretrainDataset(Broken(), maker, DataConfig(max_retries=3), seed=0)
    with pytest.raises(RuntimeError, match="4 consecutive scans were unusable"):
        ds[0]


def test_state_roundtrip_and_fallback(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    for step in (10, 20, 30):
        state_io.save_state(tmp_path, step, model.state_dict(), opt.state_dict(), {"counters": {"scans_seen": step}}, keep=2)
    assert [p.name for p in state_io.list_states(tmp_path)] == ["state-00000020.safetensors", "state-00000030.safetensors"]
    latest = state_io.load_latest(tmp_path)
    assert latest.step == 30 and latest.extra["counters"]["scans_seen"] == 30
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model2.load_state_dict(latest.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(latest.optimizer)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    # a damaged newest file (e.g. the disk filled up) falls back to the previous one; temp files are ignored
    (tmp_path / "state-00000030.safetensors").write_bytes(b"garbage")
    (tmp_path / ".state-00000040.safetensors.123.tmp").write_bytes(b"partial")
    assert state_io.load_latest(tmp_path).step == 20


def test_metrics_csv_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=True)
    for step in range(1, 6):
        log.log(step, {"loss": 1.0 / step})
    log.close()
    assert list((tmp_path / "tensorboard").iterdir())
    resumed = MetricsLogger(tmp_path, tensorboard=False, resume_step=3)
    resumed.log(4, {"loss": 0.3, "new_monitor": 1.0})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,loss,new_monitor" and len(lines) == 5 and lines[-1].startswith("4,0.3")


@pytest.mark.parametrize("recipe", ["sonata", "msm", "jepa", "mae", "acl"])
def test_shipped_configs_load(recipe):
    cfg = load_config(REPO / "config" / "pretrain" / f"{recipe}.yaml")
    assert cfg.recipe_name == recipe and cfg.encoder["size"] == "nano"
    assert cfg.data.sources and cfg.run.steps > 0


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="recipe"):
        config_from_dict({"recipe": {"name": "sonata", "not_a_key": 1}})
    with pytest.raises(ConfigError, match="unknown top-level"):
        config_from_dict({"recipes": {}})
    with pytest.raises(ConfigError, match="run"):
        config_from_dict({"run": {"stepz": 3}})
    with pytest.raises(ConfigError, match="unknown recipe"):
        config_from_dict({"recipe": {"name": "nope"}})
    with pytest.raises(ConfigError, match="view group"):
        config_from_dict({"recipe": {"name": "jepa", "views": {"global": {"count": 1}}}})
    with pytest.raises(ConfigError, match="view group"):
        config_from_dict({"recipe": {"name": "acl", "base": "msm", "base_config": {"views": {"scene": {}}}}})
    with pytest.raises(ConfigError, match="encoder"):
        config_from_dict({"encoder": {"size": "huge"}})
    with pytest.raises(ConfigError, match="in_channels"):
        config_from_dict({"encoder": {"in_channels": 4}})
    cfg = config_from_dict({"recipe": {"name": "mae", "leak_positions": True}, "run": {"steps": 7}})
    assert cfg.recipe.leak_positions is True and cfg.run.steps == 7
    assert cfg.to_dict()["recipe"]["name"] == "mae"


def test_config_overrides_from_the_command_line():
    path = REPO / "config" / "pretrain" / "sonata.yaml"
    cfg = load_config(path, ["preprocessing.voxel_size=0.15", "encoder.size=micro", "recipe.prototypes=64",
                             "preprocessing.features=[xyz, intensity]"])
    assert cfg.preprocessing.voxel_size == 0.15 and cfg.encoder["size"] == "micro"
    assert cfg.recipe.prototypes == 64 and tuple(cfg.preprocessing.features) == ("xyz", "intensity")
    assert load_config(path).preprocessing.voxel_size == 0.1  # the file itself is untouched
    with pytest.raises(ConfigError, match="preprocessing"):
        load_config(path, ["preprocessing.voxel_sise=0.15"])  # misspelt keys are still unknown keys
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        load_config(path, ["preprocessing.voxel_size"])
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(path, ["run.steps.x=1"])
