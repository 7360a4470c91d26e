"""Probes, metrics, class maps and splits; the probe on simulated scans with a pretrained checkpoint,
and on the real SemanticKITTI scan."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ssl3d_ros.labels import (
    IGNORE, ScoreAccumulator, SplitConfig, block_split, confusion_matrix, load_class_map, point_test_masks, scan_split,
    segmentation_scores,
)

PRETRAIN_YAML = """
data: {sources: ["sim:outdoor"], sim_count: 1, sim_seed: 0}
preprocessing: {voxel_size: 0.1, max_range: 50.0, features: [xyz, height, intensity], coord_scale: 20.0}
encoder: {size: nano}
recipe:
  name: sonata
  views:
    global: {count: 2, crop: ball, crop_points: 3000, center_jitter: 1.0}
    local: {count: 2, crop: ball, crop_points: 800, center_jitter: 4.0}
  prototypes: 64
optim: {warmup_steps: 1}
run: {steps: 2, batch_size: 1, checkpoint_every: 100, workers: 0, device: cpu, tensorboard: false}
"""


@pytest.fixture(scope="module")
def pretrained_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint from the real pretraining CLI (Sonata recipe, a few CPU steps on simulated scans)."""
    pytest.importorskip("open3d")
    from ssl3d_ros.training.pretrain import main as pretrain_main

    run = tmp_path_factory.mktemp("pretrain")
    config = run / "config.yaml"
    config.write_text(PRETRAIN_YAML)
    assert pretrain_main(["--config", str(config), "--out", str(run / "out"), "--no-progress"]) == 0
    return run / "out" / "encoder.safetensors"


@pytest.fixture(scope="module")
def sim_scans():
    pytest.importorskip("open3d")
    from ssl3d_ros.sim import SimConfig, simulate_sequence

    return list(simulate_sequence(SimConfig(scene="outdoor"), 1, seed=5))  # not the pretraining scene


# --------------------------------------------------------------------------- metrics


def test_confusion_iou_and_ignore():
    truth = np.array([0, 0, 1, 1, 2, IGNORE, 2])
    pred = np.array([0, 1, 1, 1, 2, 0, IGNORE])  # the last labelled point got no prediction
    conf = confusion_matrix(truth, pred, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    s = segmentation_scores(truth, pred, 3)
    # class 0: tp 1, fn 1 -> 1/2; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 (invalid) -> 1/2
    np.testing.assert_allclose(s.iou, [0.5, 2 / 3, 0.5])
    assert s.miou == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert s.accuracy == pytest.approx(4 / 6)  # the ignored point does not count, the invalid one misses
    acc = ScoreAccumulator(3)
    acc.add(truth[:3], pred[:3])
    acc.add(truth[3:], pred[3:])
    np.testing.assert_allclose(acc.scores().iou, s.iou)
    # A class absent from both truth and prediction is NaN and left out of the mean.
    s4 = segmentation_scores(truth, pred, 4)
    assert np.isnan(s4.iou[3]) and s4.miou == pytest.approx(s.miou)


# --------------------------------------------------------------------------- class maps and splits


def test_semantickitti_maps_agree_with_the_official_yaml(shared_data):
    official = yaml.safe_load((shared_data / "lidar/semantickitti/semantic-kitti.yaml").read_text())
    raw_map = load_class_map("semantickitti")
    from_official = load_class_map(shared_data / "lidar/semantickitti/semantic-kitti.yaml")
    assert raw_map.class_names == from_official.class_names and (raw_map.table == from_official.table).all()
    raw_ids = np.array(sorted(official["learning_map"]))
    expected = np.array([official["learning_map"][r] for r in raw_ids]) - 1  # learning id 0 -> IGNORE
    np.testing.assert_array_equal(raw_map.apply(raw_ids), np.where(expected < 0, IGNORE, expected))
    learning = load_class_map("semantickitti-learning")
    labels = np.load(shared_data / "lidar/semantickitti/000700.labels.npy").reshape(-1)
    mapped = learning.apply(labels)
    assert ((mapped == IGNORE) == (labels == 0)).all() and mapped.max() == labels.max() - 1
    assert learning.class_names[mapped[labels == 1][0]] == "car"


def test_scannet20_map_on_real_labels(shared_data):
    cmap = load_class_map("scannet20")
    assert cmap.num_classes == 20
    nyu = np.load(shared_data / "indoor/scannet/scene0000_00_sem_label_all.npy").astype(np.int64)
    mapped = cmap.apply(nyu)
    benchmark = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]
    assert ((mapped >= 0) == np.isin(nyu, benchmark)).all()
    assert cmap.class_names[mapped[nyu == 1][0]] == "wall" and cmap.class_names[mapped[nyu == 39][0]] == "otherfurniture"
    assert (mapped >= 0).mean() > 0.5  # most of the scene is in the 20 classes


def test_block_split_rule():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 40, size=(5000, 3)).astype(np.float32)
    test = block_split(pts, 10.0, 0.25, seed=3)
    blocks = np.floor(pts[:, :2] / 10).astype(int)
    keys = blocks[:, 0] * 1000 + blocks[:, 1]
    # Whole blocks go one way: no block has points on both sides.
    for k in np.unique(keys):
        assert len(np.unique(test[keys == k])) == 1
    assert len(np.unique(keys[test])) == 4  # round(0.25 * 16 blocks)
    np.testing.assert_array_equal(test, block_split(pts, 10.0, 0.25, seed=3))  # seeded
    assert scan_split(5, 0.3).tolist() == [False, False, False, True, True]
    masks = point_test_masks([pts, pts], SplitConfig(kind="x_half"))
    assert abs(masks[0].mean() - 0.5) < 0.01


# --------------------------------------------------------------------------- probes


def test_probes_on_simulated_scans_beat_chance_and_the_head_runs_in_the_pipeline(
        pretrained_checkpoint, sim_scans, tmp_path):
    from ssl3d_ros.evaluation.probe import (
        ProbeConfig, SupervisedConfig, label_scans, load_encoder, probe_report, run_probes, write_head,
    )
    from ssl3d_ros.evaluation.probes import LinearProbeConfig
    from ssl3d_ros.evaluation.features import extract_features
    from ssl3d_ros.perception import PerceptionPipeline

    cmap = load_class_map("sim-outdoor")
    cfg = ProbeConfig(linear=LinearProbeConfig(max_iter=30), supervised=SupervisedConfig(steps=1),
                      max_points_per_scan=4000, split=SplitConfig(kind="block", block_size=8.0, test_fraction=0.4))
    encoder, factory, pre_cfg, _ = load_encoder(pretrained_checkpoint)
    data = label_scans(sim_scans, cmap, cfg.split, cfg.max_points_per_scan)
    results, linear = run_probes(encoder, factory, pre_cfg, data, cfg)
    by = {(r.encoder, r.probe.split(",")[0]): r.scores for r in results}
    chance = by[("none", "majority class")]
    for probe in ("linear", "knn k=10", "multilevel linear"):
        s = by[("checkpoint", probe)]
        assert s.miou > 2.0 * chance.miou, (probe, s.miou, chance.miou)
        assert s.accuracy > chance.accuracy + 0.1, (probe, s.accuracy, chance.accuracy)
    assert {("raw input", "linear"), ("random init", "linear"), ("supervised", "end-to-end")} <= set(by)
    doc, md = probe_report(results, data, cfg, {"checkpoint": str(pretrained_checkpoint)})
    assert len(doc["results"]) == len(results) and "| checkpoint | linear |" in md
    assert set(doc["results"][1]["iou"]) == set(cmap.class_names)

    # The written head, inside the node's own pipeline, predicts what the probe predicts.
    out = write_head(pretrained_checkpoint, tmp_path / "with_head.safetensors", linear, cmap)
    pipe = PerceptionPipeline.from_checkpoint(out, device="cpu")
    assert pipe.class_names == cmap.class_names
    scan = sim_scans[0]
    result = pipe.process(scan, segmentation=True, embeddings=False)
    feats = extract_features(encoder, pre_cfg, scan, ("hypercolumn",))["hypercolumn"]
    expected = linear.predict(feats.feat)
    agree = (result.class_id[feats.index].astype(np.int64) == expected).mean()
    assert agree > 0.995
    assert (result.class_id[~result.valid] == 255).all()


def test_cli_on_real_semantickitti(shared_data, tmp_path):
    """The CLI end to end on the real SemanticKITTI scan (world frame, no intensity) with an
    untrained encoder whose preprocessing fits that data: report files, real class names, and a
    linear model on real geometry beating the majority class."""
    from ssl3d_ros.checkpoint import save_checkpoint
    from ssl3d_ros.evaluation.probe import main
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels

    pre = PreprocessConfig(voxel_size=0.2, features=("xyz", "height"), coord_scale=20.0, xyz_center="mean")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "untrained.safetensors",
                           SparseEncoder(EncoderConfig.preset("nano", in_channels=feature_channels(pre))),
                           preprocessing=pre)
    scan = shared_data / "lidar/semantickitti/000700.points.npy"
    out = tmp_path / "report"
    assert main(["--checkpoint", str(ckpt), str(scan), "--class-map", "semantickitti-learning",
                 "--probes", "linear", "--baselines", "raw", "--block-size", "10", "--max-points-per-scan", "6000",
                 "--linear-iters", "40", "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    rows = {(r["encoder"], r["probe"]): r for r in doc["results"]}
    assert set(rows) == {("none", "majority class"), ("checkpoint", "linear"), ("raw input", "linear")}
    lin = rows[("checkpoint", "linear")]
    assert lin["class_names"][0] == "car" and len(lin["class_names"]) == 19
    assert lin["miou"] > rows[("none", "majority class")]["miou"]
    assert lin["test_points"] > 500 and lin["train_points"] > 2000
    assert "Per-class IoU" in (out / "report.md").read_text()


def test_cli_split_seed_is_separate_from_the_seed_and_defaults_follow_the_study():
    """--seed moves the point subset and the probes, not the split: runs with seeds 0, 1, 2 are scored
    on one fixed split (the study's protocol); --split-seed moves the split alone."""
    from ssl3d_ros.evaluation.probe import build_parser, config_from_args

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["--checkpoint", "c.safetensors", *argv]))

    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, size=(4000, 3)).astype(np.float32)
    split0 = point_test_masks([pts], cfg().split)[0]
    seeded = cfg("--seed", "2")
    assert (seeded.linear.seed, seeded.knn.seed, seeded.supervised.seed, seeded.seed) == (2, 2, 2, 2)
    np.testing.assert_array_equal(point_test_masks([pts], seeded.split)[0], split0)
    moved = cfg("--split-seed", "1")
    assert moved.seed == 0 and moved.linear.seed == 0
    assert not np.array_equal(point_test_masks([pts], moved.split)[0], split0)
    # Defaults: the study's SemanticKITTI split block, supervised steps and thread count.
    defaults = build_parser().parse_args(["--checkpoint", "c.safetensors"])
    assert (defaults.block_size, defaults.supervised_steps, defaults.threads, defaults.split_seed) == (10.0, 200, 1, 0)


def test_supervised_point_predictions_mark_dropped_points():
    """The supervised reference's per-point classes come through the one unpooling helper: points the
    preprocessing dropped (out of range) get -1, kept points the class of their voxel."""
    from ssl3d_ros.evaluation.probe import supervised_point_predictions
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.preprocessing import PreprocessConfig, collate, feature_channels, preprocess
    from ssl3d_ros.scan import Scan

    rng = np.random.default_rng(0)
    scan = Scan(points=rng.uniform(-30, 30, size=(3000, 3)).astype(np.float32))
    pre = PreprocessConfig(voxel_size=0.5, max_range=25.0, features=("constant", "height"), coord_scale=20.0)
    torch.manual_seed(0)
    enc = SparseEncoder(EncoderConfig.preset("nano", in_channels=feature_channels(pre), backend="torch")).eval()
    vox = preprocess(scan, pre)
    with torch.no_grad():
        head = torch.nn.Linear(enc.hypercolumn(enc(collate([vox]))).shape[1], 5)
        voxel_class = head(enc.hypercolumn(enc(collate([vox])))).argmax(1).numpy()
    pred = supervised_point_predictions(enc, head, scan, pre)
    valid = np.asarray(vox.point_valid)
    assert (~valid).sum() > 100 and (pred[~valid] == -1).all()
    np.testing.assert_array_equal(pred[valid], voxel_class[np.asarray(vox.point_voxel)[valid]])


def test_cli_test_inputs_split_by_files_and_the_report_counts_the_points_fitted(tmp_path, capsys):
    """--test-inputs: the positional inputs train, the named files test (overlap refused in one line);
    the report names both sides, and its train points are those each probe fits (capped), beside the
    labelled train points available."""
    pytest.importorskip("open3d")
    from ssl3d_ros.checkpoint import save_checkpoint
    from ssl3d_ros.evaluation.probe import ProbeConfig, label_scans, load_encoder, main, probe_report, run_probes
    from ssl3d_ros.evaluation.probes import KNNProbeConfig, LinearProbeConfig
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels
    from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar

    files = []
    for i, scan in enumerate(simulate_sequence(with_lidar(SimConfig(), beams=16, columns=256), 3, seed=2)):
        np.save(tmp_path / f"{i:06d}.points.npy", np.column_stack([scan.points, scan.fields["intensity"]]))
        np.save(tmp_path / f"{i:06d}.labels.npy", scan.labels.astype(np.int32))
        files.append(str(tmp_path / f"{i:06d}.points.npy"))
    pre = PreprocessConfig(voxel_size=0.5, features=("xyz", "height"), coord_scale=20.0)
    torch.manual_seed(0)
    ckpt = str(save_checkpoint(tmp_path / "untrained.safetensors",
                               SparseEncoder(EncoderConfig.preset("nano", in_channels=feature_channels(pre))),
                               preprocessing=pre))
    common = ["--checkpoint", ckpt, "--class-map", "sim-outdoor", "--probes", "linear", "--baselines",
              "--linear-iters", "5", "--out", str(tmp_path / "report")]
    assert main([*common, files[0], files[1], "--test-inputs", files[2]]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert doc["train_scans"] == files[:2] and doc["test_scans"] == files[2:] and "--test-inputs" in doc["split"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"- test scans: {files[2]}" in md and f"- train scans: {files[0]}, {files[1]}" in md
    assert main([*common, files[0], files[1], "--test-inputs", files[1]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "both" in err[0] and files[1] in err[0], err

    # the linear probe fits at most max_train_points, the kNN bank holds at most max_bank_points
    cfg = ProbeConfig(linear=LinearProbeConfig(max_iter=5, max_train_points=500), knn=KNNProbeConfig(max_bank_points=300),
                      probes=("linear", "knn"), baselines=(), split=SplitConfig(kind="x_half"))
    encoder, factory, pre_cfg, _ = load_encoder(ckpt)
    scans = [s for s in simulate_sequence(with_lidar(SimConfig(), beams=16, columns=256), 1, seed=2)]
    results, _ = run_probes(encoder, factory, pre_cfg, label_scans(scans, load_class_map("sim-outdoor"), cfg.split, 4000),
                            cfg)
    fitted = {r.probe: (r.train_points, r.train_labelled) for r in results}
    labelled = fitted["linear"][1]
    assert labelled > 500 and fitted == {"majority class": (labelled, labelled), "linear": (500, labelled),
                                         "knn k=10": (300, labelled)}
    doc, md = probe_report(results, label_scans(scans, load_class_map("sim-outdoor"), cfg.split, 4000), cfg, {})
    assert [(r["train_points"], r["train_labelled"]) for r in doc["results"]] == list(fitted.values())
    assert f"| checkpoint | linear | " in md and f"| 500 | {labelled:,} |" in md
