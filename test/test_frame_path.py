"""One path for a frame, without DDS: bad clouds rejected before preprocessing, every point kept in
message order, validity decided by preprocessing alone, outputs and diagnostics as pure functions."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ssl3d_ros.codec import FLOAT32, FLOAT64, CloudFormatError, FieldSpec, encode_cloud, fill_cloud_message, scan_from_cloud
from ssl3d_ros.config import ConfigError
from ssl3d_ros.labels import NO_CLASS
from ssl3d_ros.perception import (
    ERROR, OK, WARN, CloudResult, FrameResult, DiagnosticsConfig, DiagnosticsPolicy, NodeConfig, NodeStats, OutputEncoder, OutputSelection,
    PerceptionPipeline, WarningThrottle, embedding_cloud_bytes, encode_outputs, frame_timings, leaf_parameters,
    node_config_from_params, shared_memory_segment, transport_warning, unknown_parameters,
)
from ssl3d_ros.preprocessing import GRID_HALF_EXTENT, PreprocessConfig, preprocess
from ssl3d_ros.scan import Scan

from builders import CLASS_NAMES, make_checkpoint, sim_scan


def _msg(encoded) -> SimpleNamespace:
    return fill_cloud_message(SimpleNamespace(), encoded, lambda **kw: FieldSpec(**kw))


def _raw_cloud(fields, point_step: int, n: int, height: int = 1, data: bytes | None = None) -> SimpleNamespace:
    width = n // height if height else n
    return SimpleNamespace(height=height, width=width, fields=fields, is_bigendian=False, point_step=point_step,
                           row_step=width * point_step, data=data if data is not None else bytes(n * point_step),
                           is_dense=True)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")
    return PerceptionPipeline.from_checkpoint(path, device="cpu")


# ------------------------------------------------------------------------- rejected before preprocessing


def test_height_zero_with_points_across_is_rejected_by_the_decoder(pipeline):
    xyz = [FieldSpec(n, 4 * i, FLOAT32, 1) for i, n in enumerate("xyz")]
    msg = _raw_cloud(xyz + [FieldSpec("intensity", 12, FLOAT32, 1)], 16, 100, height=0)
    msg.width, msg.row_step = 100, 1600
    with pytest.raises(CloudFormatError, match="height is 0 but width is 100"):
        pipeline.process_cloud(msg)


def test_overlapping_fields_are_rejected():
    fields = [FieldSpec(n, 4 * i, FLOAT32, 1) for i, n in enumerate("xyz")] + [FieldSpec("intensity", 2, FLOAT32, 1)]
    with pytest.raises(CloudFormatError, match="'x'.*'intensity'.*overlap|'intensity'.*overlap"):
        scan_from_cloud(_raw_cloud(fields, 16, 10))


def test_intensity_with_several_values_per_point_is_rejected_not_a_processing_error(pipeline):
    rng = np.random.default_rng(0)
    msg = _msg(encode_cloud(rng.uniform(-20, 20, (50, 3)).astype(np.float32),
                            {"intensity": rng.uniform(0, 1, (50, 3)).astype(np.float32)}))
    with pytest.raises(CloudFormatError, match="'intensity'.*count 3; intensity needs count 1"):
        pipeline.process_cloud(msg)


# ------------------------------------------------------------------------- every point, in message order


def test_float64_coordinates_beyond_float32_are_not_finite_points():
    fields = [FieldSpec(n, 8 * i, FLOAT64, 1) for i, n in enumerate("xyz")]
    pts = np.array([[1.0, 2.0, 3.0], [1e300, 0.0, 0.0], [4.0, 5.0, 6.0]])
    msg = _raw_cloud(fields, 24, 3, data=pts.astype("<f8").tobytes())
    scan, index = scan_from_cloud(msg)  # the skipping contract: non-finite as float32 is dropped
    assert index.tolist() == [0, 2] and np.isfinite(scan.points).all()
    every, index = scan_from_cloud(msg, keep_invalid=True)  # the pipeline's: kept, preprocessing decides
    assert index.tolist() == [0, 1, 2] and np.isinf(every.points[1, 0])
    vox = preprocess(every, PreprocessConfig(voxel_size=0.5, features=("xyz",)))
    assert vox.point_valid.tolist() == [True, False, True]


def test_the_pipeline_decodes_once_and_keeps_every_message_point(pipeline):
    scan = sim_scan(seed=3)
    points = scan.points[: len(scan) // 8 * 8].copy()
    points[[4, 9]] = np.nan
    msg = _msg(encode_cloud(points, {"intensity": scan.fields["intensity"][: len(points)]}, height=8))
    cloud = pipeline.process_cloud(msg)
    assert cloud.xyz.shape == points.shape and (cloud.height, cloud.width) == (8, len(points) // 8)
    assert not cloud.result.valid[[4, 9]].any() and (cloud.result.class_id[[4, 9]] == NO_CLASS).all()
    # the result's index map is preprocessing's: every valid point's voxel holds its class
    assert cloud.result.point_voxel.shape == (len(points),)
    np.testing.assert_array_equal(cloud.result.valid, cloud.result.point_voxel >= 0)


# ------------------------------------------------------------------------- bounded work per frame


def test_a_point_beyond_the_voxel_grid_is_dropped_not_the_frame():
    cfg = PreprocessConfig(voxel_size=0.15, features=("xyz", "constant"))
    far = cfg.voxel_size * GRID_HALF_EXTENT * 1.01
    scan = Scan(points=np.array([[1.0, 2.0, 0.5], [far, 0.0, 0.0], [3.0, -1.0, 0.2]], np.float32))
    vox = preprocess(scan, cfg)
    assert vox.point_valid.tolist() == [True, False, True]


def test_a_range_limit_the_voxel_grid_cannot_address_is_refused_at_start_up():
    with pytest.raises(ConfigError, match=r"preprocessing.max_range \(99999.0 m\) exceeds the \d+ m"):
        PreprocessConfig(voxel_size=0.15, max_range=99999.0)
    PreprocessConfig(voxel_size=0.15, max_range=9000.0)  # within 0.15 m * 65534 voxels


def test_the_voxel_budget_counts_the_points_it_leaves_out():
    scan = sim_scan(seed=1)
    cfg = PreprocessConfig(voxel_size=0.2, features=("xyz", "intensity"), max_points=300)
    vox = preprocess(scan, cfg)
    unlimited = preprocess(scan, PreprocessConfig(voxel_size=0.2, features=("xyz", "intensity")))
    assert len(vox) == 300 < len(unlimited)
    assert vox.points_over_budget == int(unlimited.point_valid.sum() - vox.point_valid.sum()) > 0


# ------------------------------------------------------------------------- outputs and health, pure


def test_outputs_follow_the_selection_segmentation_and_obstacles_first(pipeline):
    scan = sim_scan(seed=2)
    msg = _msg(encode_cloud(scan.points, {"intensity": scan.fields["intensity"]}))
    cloud = pipeline.process_cloud(msg)
    cfg = NodeConfig()
    encoder = OutputEncoder.for_classes(pipeline.class_names, pipeline.class_colors, cfg)
    names = [name for name, _, _ in encode_outputs(cloud, OutputSelection(), encoder)]
    assert names == ["segmentation", "obstacles", "visualization", "embeddings", "occupancy"]
    only = list(encode_outputs(cloud, OutputSelection(segmentation=False, embeddings=False,
                                                      visualization=False, occupancy=True, obstacles=False), encoder))
    assert [n for n, _, _ in only] == ["occupancy"]
    assert not OutputSelection(False, False, False, False, False).any
    assert OutputSelection(False, False, False, True, False).needs_classes
    assert OutputSelection(False, False, False, False, True).needs_classes
    per_voxel = OutputEncoder.for_classes(pipeline.class_names, pipeline.class_colors,
                                          node_config_from_params({"embeddings.per_voxel": True}))
    _, voxels, _ = next(encode_outputs(cloud, OutputSelection(segmentation=False, visualization=False,
                                                             occupancy=False, obstacles=False), per_voxel))
    assert voxels.width == len(cloud.result.voxel_coord) < len(scan)


def test_empty_cloud_of_height_zero_encodes_every_output():
    cloud = CloudResult(
        result=FrameResult(valid=np.zeros(0, bool), point_voxel=np.zeros(0, np.int64), class_id=np.zeros(0, np.uint8),
                           probability=np.zeros(0, np.float32), entropy=np.zeros(0, np.float32),
                           embedding=np.zeros((0, 4), np.float32), voxel_coord=np.zeros((0, 3), np.float32),
                           voxel_embedding=np.zeros((0, 4), np.float32)),
        xyz=np.zeros((0, 3), np.float32), height=0, width=0, decode_ms=0.0)
    encoder = OutputEncoder.for_classes(list(CLASS_NAMES), np.zeros((0, 3), np.uint8), NodeConfig())
    widths = [p.width if n != "occupancy" else -1 for n, p, _ in encode_outputs(cloud, OutputSelection(), encoder)]
    assert widths == [0, 0, 0, 0, -1]


def test_unknown_parameter_names_are_named_and_rclpy_own_are_not():
    known = [name for name, *_ in leaf_parameters()]
    assert "input.qos.depth" in known and "occupancy.obstacle_classes" in known
    assert unknown_parameters(known + ["use_sim_time", "qos_overrides./x.publisher.depth", "preprocesing.voxel_size"]) \
        == ["preprocesing.voxel_size"]


def test_warning_throttle_one_line_per_kind_per_period_then_says_how_many():
    now = [0.0]
    throttle = WarningThrottle(period_s=10.0, clock=lambda: now[0])
    assert throttle.admit("bad cloud 123", "bad cloud 123") == "bad cloud 123"
    assert throttle.admit("bad cloud 456", "bad cloud 456") is None  # same kind: numbers blanked
    assert throttle.admit("other problem", "other problem") == "other problem"
    now[0] = 10.5
    assert throttle.admit("bad cloud 7", "bad cloud 7") == "bad cloud 7 [1 more like this in the last 10 s]"


def test_diagnostics_policy_levels_from_budgets_staleness_and_failures():
    cfg = DiagnosticsConfig(budget_ms=100.0, error_budget_ms=250.0, stale_after_s=3.0)
    stats = NodeStats()
    policy = DiagnosticsPolicy(cfg, start_mono=0.0)
    first = policy.report(stats, now=1.0, context={"device": "cpu"})
    assert (first.level, first.message) == (OK, "waiting for first scan")
    assert policy.report(stats, now=5.0, context={}).level == WARN
    for t in (5.0, 5.1, 5.2):
        stats.received_at(t)
        stats.add_frame({"inference": 50.0}, total_ms=120.0, latency_ms=130.0)
    warn = policy.report(stats, now=5.3, context={"device": "cpu"})
    assert warn.level == WARN and "over the budget 100 ms" in warn.message
    assert warn.values["frames_processed"] == "3" and warn.values["device"] == "cpu"
    assert float(warn.values["input_rate_hz"]) == pytest.approx(10.0)
    for _ in range(3):  # the median moves past the error budget
        stats.add_frame({}, total_ms=400.0, latency_ms=400.0)
    stats.count("rejected", "bad")
    error = policy.report(stats, now=5.4, context={})
    assert error.level == ERROR and "1 malformed cloud(s) rejected" in error.message
    assert "rejected" not in policy.report(stats, now=5.5, context={}).message  # counted once
    assert policy.report(stats, now=9.0, context={}).message.startswith("no scan for")


def test_frame_timings_split():
    stages, coarse = frame_timings(2.0, {"preprocess": 8.0, "inference": 50.0, "postprocess": 3.0}, 4.0, 1.0, 70.0)
    assert stages["decode"] == 2.0 and stages["publish"] == 1.0
    assert coarse == [10.0, 50.0, 10.0, 70.0]


def test_embedding_dims_auto_reduces_when_the_checkpoint_can(tmp_path):
    with_pca = make_checkpoint(tmp_path / "pca.safetensors", with_pca=True)  # an 8-component basis
    without = make_checkpoint(tmp_path / "no_pca.safetensors", with_pca=False)
    assert PerceptionPipeline.from_checkpoint(with_pca, device="cpu").embedding_channels == 8
    full = PerceptionPipeline.from_checkpoint(without, device="cpu")
    assert full.embedding_channels == full.encoder.hypercolumn_channels


def test_transport_warning_names_the_segment_and_the_way_out(tmp_path):
    profile = tmp_path / "profile.xml"
    profile.write_text("<profiles><transport_descriptor><segment_size>67108864</segment_size>"
                       "</transport_descriptor></profiles>")
    segment = shared_memory_segment({"FASTDDS_DEFAULT_PROFILES_FILE": str(profile)})
    assert segment == (67108864, str(profile))
    assert shared_memory_segment({}) == (512 * 1024, "Fast DDS's default (no FASTDDS_DEFAULT_PROFILES_FILE)")
    assert shared_memory_segment({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) is None
    full = embedding_cloud_bytes(120_000, 256)
    assert full == 120_000 * 1036
    warning = transport_warning("embeddings", full, segment)
    assert "124.3 MB message exceeds the 64 MiB shared-memory segment" in warning and "embeddings.per_voxel" in warning
    assert transport_warning("embeddings", embedding_cloud_bytes(50_000, 32), segment) is None
