"""Novelty: the reference (fit on real encoder outputs of simulated scans), its scores, its place in the
checkpoint (round trip, validation before allocation, older checkpoints without one), the pipeline's
frame and per-point scores, the segmentation cloud's ``novelty`` field, the WARN rule, and
``ssl3d-novelty-ref`` end to end. (Over DDS: test_node_novelty.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssl3d_ros.checkpoint import CheckpointError, add_heads, load_checkpoint, read_meta, read_metadata
from ssl3d_ros.codec import FLOAT32, decode_cloud
from ssl3d_ros.models.heads import PCAProjection
from ssl3d_ros.models.novelty import NoveltyFitError, NoveltyScorer, fit_reference
from ssl3d_ros.perception import (
    OK, WARN, CloudResult, ComputedFrame, DiagnosticsPolicy, NodeConfig, NodeStats, NoveltyConfig, NoveltyMonitor,
    OutputEncoder, OutputSelection, PerceptionPipeline, encode_outputs, novelty_reading,
)
from ssl3d_ros.preprocessing import collate, preprocess
from ssl3d_ros.training.novelty import evenly_spaced, fit_on_scans

from builders import make_checkpoint, rewrite, sim_scan

REPO = Path(__file__).resolve().parents[1]


def street(index: int, seed: int = 0):
    return sim_scan(seed=seed, index=index)


def room(index: int, seed: int = 0):
    from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar

    cfg = with_lidar(SimConfig(scene="indoor"), beams=16, columns=512)
    return list(simulate_sequence(cfg, index + 1, seed=seed))[index]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A random-init nano checkpoint with a head and a PCA basis, without a novelty reference (as every
    checkpoint written before novelty existed)."""
    return make_checkpoint(tmp_path_factory.mktemp("novelty") / "plain.safetensors")


@pytest.fixture(scope="module")
def street_scans():
    return [street(i) for i in range(4)]


@pytest.fixture(scope="module")
def with_reference(plain, street_scans, tmp_path_factory) -> Path:
    """``plain`` with a reference fitted on four frames of a simulated street."""
    ckpt = load_checkpoint(plain)
    reference = fit_on_scans(ckpt.encoder, street_scans, ckpt.preprocessing, torch.device("cpu"),
                             sources=["sim street, seed 0"])
    return add_heads(plain, tmp_path_factory.mktemp("novelty") / "reference.safetensors", novelty=reference)


def test_reference_scores_its_own_frames_low_and_another_scene_high(with_reference, street_scans):
    ckpt = load_checkpoint(with_reference)
    ref = ckpt.novelty
    assert (ref.frames, ref.dims, ref.num_prototypes, ref.sources) == (4, 16, 32, ["sim street, seed 0"])
    assert ref.quantile_levels == (0.5, 0.9, 0.95, 0.99) and ref.normalise_at == 0.95
    assert torch.allclose(ref.basis.T @ ref.basis, torch.eye(16), atol=1e-4)  # orthonormal principal axes
    assert abs(float(ref.share_mean.sum()) - 1) < 1e-5 and bool((ref.share_std >= 0.01).all())
    scorer = NoveltyScorer(ref)

    def score(scan, voxel_scores=False):
        with torch.inference_mode():
            out = ckpt.encoder(collate([preprocess(scan, ckpt.preprocessing)]))
            return scorer.score(out, voxel_scores), ckpt.encoder.hypercolumn(out)

    own = [score(s)[0].score for s in street_scans]
    # the reference's own frames: 1.0 is their 95th percentile, so none is far above it
    assert max(own) <= 1.1 and float(np.quantile(own, 0.95)) == pytest.approx(1.0, abs=0.05)
    rooms = [score(room(i))[0].score for i in range(2)]
    assert min(rooms) > 2 * max(own), (own, rooms)
    # level by level (the node) equals the hypercolumn (offline tools), per voxel too
    levelwise, hyper = score(room(0), voxel_scores=True)
    full = scorer.score_hypercolumns(hyper, voxel_scores=True)
    assert levelwise.score == pytest.approx(full.score, rel=1e-5)
    torch.testing.assert_close(levelwise.voxel_scores, full.voxel_scores, atol=1e-4, rtol=1e-4)
    assert levelwise.voxel_share == pytest.approx(float((full.voxel_scores > 1).float().mean()), abs=1e-3)


def test_fit_refuses_data_that_cannot_calibrate_in_one_line():
    generator = torch.Generator().manual_seed(0)
    one = torch.randn(500, 8, generator=generator)
    with pytest.raises(NoveltyFitError, match="at least 2 frames"):
        fit_reference([one])
    for seed in (0, 1, 11):  # identical frames leave rounding residue in the frame quantile with seeds 1 and 11
        one = torch.randn(500, 8, generator=torch.Generator().manual_seed(seed))
        with pytest.raises(NoveltyFitError, match="too alike"):
            fit_reference([one, one.clone(), one.clone()], dims=4, prototypes=4)
    with pytest.raises(NoveltyFitError, match="cannot place 64 prototypes"):
        fit_reference([torch.randn(20, 8, generator=generator), torch.randn(20, 8, generator=generator)], dims=4,
                      prototypes=64)
    assert evenly_spaced(10, 4) == [0, 2, 5, 7] and evenly_spaced(3, 16) == [0, 1, 2] and evenly_spaced(5, 0) == list(range(5))


def test_round_trip_keeps_the_reference_and_adding_heads_keeps_it(with_reference, tmp_path):
    ckpt = load_checkpoint(with_reference)
    document = read_metadata(with_reference)["heads"]["novelty"]
    assert document == {"in_channels": ckpt.encoder.hypercolumn_channels, "dims": 16, "prototypes": 32,
                        "quantile_levels": [0.5, 0.9, 0.95, 0.99], "normalise_at": 0.95, "frames": 4,
                        "voxels": ckpt.novelty.voxels, "sources": ["sim street, seed 0"], "input": "hypercolumn"}
    stored = load_file(with_reference)
    assert {k for k in stored if k.startswith("novelty.")} == {
        "novelty.mean", "novelty.basis", "novelty.prototypes", "novelty.share_mean", "novelty.share_std",
        "novelty.voxel_quantiles", "novelty.frame_quantiles"}
    assert all(stored[k].dtype == torch.float32 for k in stored if k.startswith("novelty."))
    # another head added later (a new PCA basis) keeps the reference, byte for byte
    out = add_heads(with_reference, tmp_path / "more.safetensors", pca=PCAProjection.fit(torch.randn(300, 256), 4))
    again = load_checkpoint(out)
    for name, value in ckpt.novelty.tensors().items():
        assert torch.equal(getattr(again.novelty, name), value), name
    assert again.pca.out_channels == 4


def test_a_checkpoint_without_reference_loads_with_novelty_off(plain):
    ckpt = load_checkpoint(plain)
    assert ckpt.novelty is None and ckpt.meta.heads.novelty is None
    assert "novelty" not in read_metadata(plain)["heads"] or read_metadata(plain)["heads"]["novelty"] is None
    pipe = PerceptionPipeline.from_checkpoint(plain, device="cpu")
    assert pipe.novelty is None
    result = pipe.process(street(0), point_novelty=True)
    assert result.novelty is None and result.point_novelty is None and "novelty" not in result.timings_ms


@pytest.mark.parametrize(("edit", "problem"), [
    ("basis_shape", r"novelty reference does not match heads\.novelty .*novelty\.basis \(256, 15\)"),
    ("dtype", r"novelty reference tensors must be F32: \['novelty\.voxel_quantiles F64'\]"),
    ("prototype_count", r"novelty\.prototypes \(32, 16\) \(expected \(31, 16\)\)"),
    ("missing", r"declares a novelty reference but tensors \['novelty\.share_std'\] are missing"),
    ("levels", r"quantile_levels must be 1\.\.64 increasing levels"),
])
def test_a_corrupted_reference_is_refused_before_allocation_in_one_line(with_reference, tmp_path, edit, problem):
    tensors, document = dict(load_file(with_reference)), read_metadata(with_reference)
    if edit == "basis_shape":
        tensors["novelty.basis"] = tensors["novelty.basis"][:, :15].contiguous()
    elif edit == "dtype":
        tensors["novelty.voxel_quantiles"] = tensors["novelty.voxel_quantiles"].double()
    elif edit == "prototype_count":
        document["heads"]["novelty"]["prototypes"] = 31
    elif edit == "missing":
        del tensors["novelty.share_std"]
    else:
        document["heads"]["novelty"]["quantile_levels"] = [0.95, 0.5]
    bad = rewrite(with_reference, tmp_path / f"{edit}.safetensors", tensors=tensors, document=document)
    for read in (read_meta, load_checkpoint):  # read_meta reads no tensor: refused from the header alone
        with pytest.raises(CheckpointError, match=rf"{bad.name}: .*{problem}") as info:
            read(bad)
        assert "\n" not in str(info.value)


def test_reference_values_are_checked_when_loaded(with_reference, tmp_path):
    tensors = dict(load_file(with_reference))
    tensors["novelty.frame_quantiles"] = tensors["novelty.frame_quantiles"].flip(0).contiguous()
    bad = rewrite(with_reference, tmp_path / "unsorted.safetensors", tensors=tensors)
    read_meta(bad)  # shapes and dtypes are fine
    with pytest.raises(CheckpointError, match="novelty.frame_quantiles must be positive and non-decreasing"):
        load_checkpoint(bad)
    tensors = dict(load_file(with_reference))
    tensors["novelty.prototypes"] = torch.full_like(tensors["novelty.prototypes"], float("nan"))
    with pytest.raises(CheckpointError, match=r"NaN/Inf: \['prototypes'\]"):
        load_checkpoint(rewrite(with_reference, tmp_path / "nan.safetensors", tensors=tensors))


def test_pipeline_scores_frames_and_points_and_the_segmentation_cloud_carries_them(with_reference):
    pipe = PerceptionPipeline.from_checkpoint(with_reference, device="cpu")
    off = PerceptionPipeline.from_checkpoint(with_reference, device="cpu",
                                             overrides=NodeConfig(novelty=NoveltyConfig(enabled=False)))
    assert pipe.novelty is not None and off.novelty is None
    scan = room(1)
    result = pipe.process(scan, point_novelty=True)
    assert result.novelty > 2 and 0 <= result.novelty_voxel_share <= 1 and result.timings_ms["novelty"] >= 0
    assert result.point_novelty.shape == (len(scan),) and result.point_novelty.dtype == np.float32
    assert (result.point_novelty[~result.valid] == 0).all() and (result.point_novelty[result.valid] > 0).all()
    # only novelty asked for: the encoder runs, no segmentation or embedding is made
    alone = pipe.process(scan, segmentation=False, embeddings=False)
    assert alone.novelty == pytest.approx(result.novelty, rel=1e-5) and alone.class_id is None and alone.point_novelty is None

    cloud = CloudResult(result, scan.points, 1, len(scan), 0.0)
    cfg = NodeConfig(novelty=NoveltyConfig(per_point=True))
    encoder = OutputEncoder.for_classes(pipe.class_names, pipe.class_colors, cfg)
    segmentation_only = OutputSelection(embeddings=False, visualization=False, occupancy=False, obstacles=False)
    (_, seg, _), = encode_outputs(cloud, segmentation_only, encoder)
    assert seg.point_step == 28 and (seg.fields[-1].name, seg.fields[-1].offset, seg.fields[-1].datatype) == ("novelty", 24, FLOAT32)
    np.testing.assert_array_equal(decode_cloud(seg).field_values("novelty"), result.point_novelty)
    plain_encoder = OutputEncoder.for_classes(pipe.class_names, pipe.class_colors, NodeConfig())
    (_, seg24, _), = encode_outputs(cloud, segmentation_only, plain_encoder)
    assert seg24.point_step == 24  # per_point off: Autoware's layout unchanged

    reading = novelty_reading(ComputedFrame(None, cloud, OutputSelection(novelty=True), 0.0, novelty_recent_share=0.25))
    assert (reading.score, reading.voxel_share, reading.recent_share) == (
        pytest.approx(result.novelty), pytest.approx(result.novelty_voxel_share), 0.25)
    assert OutputSelection(False, False, False, False, False, novelty=True).any


def test_warn_when_a_share_of_the_recent_frames_is_over_the_threshold():
    monitor = NoveltyMonitor(NoveltyConfig(threshold=1.5, window=4, warn_share=0.5))
    policy = DiagnosticsPolicy(NodeConfig().diagnostics, 0.0, monitor)
    assert monitor.status()[0] == OK and policy.report(NodeStats(), 1.0, {}).values["novelty_last"] == ""
    assert monitor.add(3.0) == 0.25  # one novel frame of a window of 4: frames not yet seen count as not novel
    assert monitor.status()[0] == OK
    assert monitor.add(0.5) == 0.25 and monitor.add(2.0) == 0.5
    level, message, values = monitor.status()
    assert level == WARN and message == "novel input: 2 of the last 4 frames score over novelty.threshold 1.5 (last 2.00)"
    assert values["novelty_share_over_threshold"] == "0.50" and values["novelty_last"] == "2.000"
    report = policy.report(NodeStats(), 1.0, {})
    assert report.level == WARN and "novel input" in report.message and report.values["novelty_enabled"] == "true"
    for score in (0.3, 0.4, 0.2):  # the novel frames leave the window
        monitor.add(score)
    assert monitor.status()[0] == OK and policy.report(NodeStats(), 2.0, {}).level == OK
    assert DiagnosticsPolicy(NodeConfig().diagnostics, 0.0).report(NodeStats(), 1.0, {}).values["novelty_enabled"] == "false"


def test_novelty_parameters_are_checked():
    from ssl3d_ros.config import ConfigError
    from ssl3d_ros.perception import node_config_from_params

    for key, value in (("threshold", 0.0), ("window", 0), ("warn_share", 1.5)):
        with pytest.raises(ConfigError, match=f"parameter 'novelty.{key}'"):
            node_config_from_params({f"novelty.{key}": value})


def test_novelty_ref_command_writes_a_reference_the_node_pipeline_uses(plain, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "with_ref.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "ssl3d_ros.training.novelty", "--checkpoint", str(plain), "--data", "sim:outdoor:3",
         "--scans", "2", "--dims", "8", "--prototypes", "16", "--out", str(out)],
        capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"novelty reference of 2 scans (16 prototypes in 8 dims;" in result.stdout and str(out) in result.stdout
    ckpt = load_checkpoint(out)
    assert (ckpt.novelty.frames, ckpt.novelty.dims, ckpt.novelty.num_prototypes) == (2, 8, 16)
    assert ckpt.novelty.sources == ["sim:outdoor:3"]
    # everything else is the input checkpoint's
    before = load_checkpoint(plain)
    assert all(torch.equal(v, ckpt.encoder.state_dict()[k]) for k, v in before.encoder.state_dict().items())
    assert torch.equal(ckpt.seg_head.weight, before.seg_head.weight) and ckpt.pca.out_channels == before.pca.out_channels
    assert json.loads(json.dumps(read_metadata(out)["recipe"])) == read_metadata(plain)["recipe"]


def test_auroc_counts_ties_half():
    from ssl3d_ros.evaluation.novelty_study import auroc

    assert auroc([0.1, 0.2], [0.3, 0.4]) == 1.0 and auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert auroc([0.5], [0.5]) == 0.5 and auroc([0.1, 0.5], [0.5]) == 0.75 and np.isnan(auroc([], [1.0]))


@pytest.mark.slow
def test_novelty_study_command_writes_its_report(plain, tmp_path):
    """The study end to end on simulated sets (the repository's run is scripts/novelty-study)."""
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "ssl3d_ros.evaluation.novelty_study", "--checkpoint", str(plain),
         "--reference", "sim:outdoor:8", "--familiar", "street=sim:outdoor:2", "--other", "room=sim:indoor:2",
         "--control", "depth=sim-depth:outdoor:2", "--switch-frames", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=280, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["reference"]["frames"] == 8 and list(data["sets"]) == ["street", "room", "depth"]
    assert data["pairs"]["room"]["auroc"] == 1.0  # a room against streets: every room frame scores higher
    assert [s["group"] for s in data["sets"].values()] == ["familiar", "other", "control"]
    assert len(data["switch"]) == 1 and len(data["switch"][0]["scores"]) == 4
    text = (out / "results.md").read_text()
    assert "| room | other sensor | 2 |" in text and "python -m ssl3d_ros.evaluation.novelty_study" in text
    assert (out / "novelty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "ssl3d_ros.evaluation.novelty_study", "--checkpoint", str(plain),
                          "--reference", "sim:outdoor:2", "--familiar", "no-source", "--out", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("novelty-study: error: --familiar 'no-source'")
