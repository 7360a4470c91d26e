"""The inference pipeline the node, the replay and the evaluation share (no ROS here)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssl3d_ros.codec import FieldSpec, encode_cloud, fill_cloud_message
from ssl3d_ros.config import ConfigError
from ssl3d_ros.labels import NO_CLASS
from ssl3d_ros.perception import (
    CPU_BACKEND, FREE, OCCUPIED, UNKNOWN, NodeConfig, OccupancyConfig, OutputEncoder, PerceptionPipeline,
    class_color_table, load_node_config, node_config_from_params, obstacle_lookup, occupancy_grid, parse_colors,
    resolve_device, resolve_precision,
)
from ssl3d_ros.preprocessing import unpool
from ssl3d_ros.scan import Scan

from builders import CLASS_NAMES, make_checkpoint, sim_scan  # noqa: E402


# ------------------------------------------------------------------------------------ parameters


def test_params_dotted_and_nested_keys_build_the_typed_config():
    cfg = node_config_from_params({
        "device": "cpu",
        "input.qos.reliability": "reliable",
        "input": {"intensity_field": "reflectivity"},
        "preprocessing.voxel_size": 1,  # an integer where a float is expected is fine
        "occupancy.obstacle_classes": ["car"],
    })
    assert cfg.device == "cpu"
    assert cfg.input.qos.reliability == "reliable" and cfg.input.qos.depth == 1
    assert cfg.input.intensity_field == "reflectivity"
    assert cfg.preprocessing.voxel_size == 1.0 and isinstance(cfg.preprocessing.voxel_size, float)
    assert cfg.occupancy.obstacle_classes == ["car"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"device": "gpu"}, "device"),
        ({"input.qos.depth": 0}, "input.qos.depth"),
        ({"input.qos.depth": "one"}, "input.qos.depth"),
        ({"preprocessing.voxel_size": -0.1}, "preprocessing.voxel_size"),
        ({"classes.colors": ["#12345"]}, "classes.colors[0]"),
        ({"occupancy.z_min": 2.0, "occupancy.z_max": 1.0}, "occupancy.z_min"),
        ({"diagnostics.budget_ms": 100.0, "diagnostics.error_budget_ms": 50.0}, "diagnostics.error_budget_ms"),
        ({"kmeans.clusters": 300}, "kmeans.clusters"),
        ({"occupancy.resolution": 0.001}, "occupancy.resolution"),
        ({"input.typo": 1}, "typo"),
    ],
)
def test_invalid_params_raise_naming_the_parameter(params, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        node_config_from_params(params)


def test_packaged_params_file_loads_offline(repo_root):
    cfg = load_node_config(repo_root / "config" / "perception.yaml")
    assert cfg == NodeConfig()  # the file documents the defaults


def test_device_falls_back_to_cpu_with_a_warning_without_cuda():
    device, warnings = resolve_device("cpu")
    assert device.type == "cpu" and warnings == []
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: no fallback to observe")
    for requested in ("auto", "cuda"):
        device, warnings = resolve_device(requested)
        assert device.type == "cpu"
        assert len(warnings) == 1 and "falling back to CPU" in warnings[0]
    dtype, warnings = resolve_precision("fp16", torch.device("cpu"))
    assert dtype == torch.float32 and warnings


# --------------------------------------------------------------------------------- pure functions


def test_occupancy_grid_without_ray_casting_marks_obstacles_and_ground_cells_only():
    cfg = OccupancyConfig(resolution=1.0, size_x=4.0, size_y=3.0, origin_x=-2.0, origin_y=-1.0, z_min=-1.0, z_max=2.0,
                          ray_cast=False)
    obstacle = np.zeros(256, bool)
    obstacle[7] = True
    xyz = np.array([
        [0.5, 0.5, 0.0],    # cell (x=2, y=1): obstacle
        [0.6, 0.4, 0.0],    # same cell, ground class: stays occupied
        [-1.5, -0.5, 0.0],  # cell (0, 0): ground -> free
        [1.5, 1.5, 5.0],    # above z_max: ignored
        [10.0, 0.0, 0.0],   # outside the grid: ignored
        [np.nan, 0.0, 0.0],  # invalid
        [-1.5, 1.5, 0.0],   # cell (0, 2): obstacle but marked invalid
    ], np.float32)
    class_id = np.array([7, 1, 1, 7, 7, NO_CLASS, 7], np.uint8)
    valid = np.array([True, True, True, True, True, False, False])
    grid = occupancy_grid(xyz, class_id, valid, obstacle, cfg)
    assert (grid.width, grid.height) == (4, 3)
    expected = np.full((3, 4), UNKNOWN, np.int8)
    expected[1, 2] = OCCUPIED
    expected[0, 0] = FREE
    np.testing.assert_array_equal(grid.data, expected)


def test_obstacle_lookup_defaults_to_non_ground_classes_and_rejects_unknown_names():
    lookup = obstacle_lookup(list(CLASS_NAMES), [])
    names = {CLASS_NAMES[i] for i in np.flatnonzero(lookup)}
    assert "car" in names and "building" in names
    assert not names & {"road", "sidewalk", "terrain", "unlabeled"}
    assert not lookup[NO_CLASS]
    only_cars = obstacle_lookup(list(CLASS_NAMES), ["car"])
    assert np.flatnonzero(only_cars).tolist() == [CLASS_NAMES.index("car")]
    with pytest.raises(ConfigError, match="occupancy.obstacle_classes.*'lorry'"):
        obstacle_lookup(list(CLASS_NAMES), ["car", "lorry"])


def test_color_table_uses_given_colours_then_palette_and_black_for_invalid():
    table = class_color_table(parse_colors(["#ff0000", "00ff00"]), num_classes=4)
    assert table[0].tolist() == [255, 0, 0] and table[1].tolist() == [0, 255, 0]
    assert table[2].any() and table[3].any()  # palette
    assert table[NO_CLASS].tolist() == [0, 0, 0]


def test_unpooling_puts_voxel_results_back_at_message_positions():
    # The pipeline keeps every message point (NaN ones too) and unpools per-voxel outputs through the
    # one index map preprocessing made: dropped points (-1) get the invalid fill values.
    point_voxel = np.array([0, -1, -1, -1, -1, 1])
    class_id = unpool(np.array([3, 4], np.uint8), point_voxel, fill=NO_CLASS)
    probability = unpool(np.array([0.5, 0.9], np.float32), point_voxel, fill=0.0)
    entropy = unpool(np.array([0.2, 0.1], np.float32), point_voxel, fill=1.0)
    voxel_embedding = np.arange(4, dtype=np.float32).reshape(2, 2)
    embedding = unpool(voxel_embedding, point_voxel, fill=0.0)
    assert class_id.tolist() == [3, 255, 255, 255, 255, 4] and class_id.dtype == np.uint8
    np.testing.assert_array_equal(embedding[[0, 5]], voxel_embedding)
    assert not embedding[[1, 2, 3, 4]].any()
    assert entropy[3] == 1.0 and probability[3] == 0.0
    assert unpool(np.zeros(0, np.uint8), point_voxel, fill=NO_CLASS).tolist() == [255] * 6


# ------------------------------------------------------------------------- with a real checkpoint


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano.safetensors", with_head=True, with_pca=True)


@pytest.fixture(scope="module")
def pipeline(checkpoint_path):
    # the full hypercolumn (embeddings.dims 0), compared below with the model spelled out by hand
    full = node_config_from_params({"embeddings.dims": 0})
    pipe = PerceptionPipeline.from_checkpoint(checkpoint_path, device="cpu", overrides=full)
    pipe.warm_up(points=3000, iterations=1)
    return pipe


@pytest.fixture(scope="module")
def scan():
    return sim_scan(seed=3)


def _with_bad_points(scan: Scan) -> tuple[Scan, np.ndarray]:
    """The scan with a NaN point and a 1 km point inserted (kept in place, marked invalid)."""
    points = scan.points.copy()
    bad = np.array([5, 17])
    points[5] = np.nan
    points[17] = (1000.0, 0.0, 0.0)
    return Scan(points=points, fields=dict(scan.fields), frame_id=scan.frame_id, stamp_ns=scan.stamp_ns,
                intensity_scale=scan.intensity_scale), bad


def test_process_gives_every_point_an_output_in_input_order(pipeline, scan):
    noisy, bad = _with_bad_points(scan)
    result = pipeline.process(noisy)
    n = len(noisy)
    assert result.class_id.shape == (n,) and result.class_id.dtype == np.uint8
    assert result.probability.shape == (n,) and result.entropy.shape == (n,)
    d = pipeline.embedding_channels
    assert result.embedding.shape == (n, d) and result.embedding.dtype == np.float32
    assert not result.valid[bad].any()
    assert (result.class_id[bad] == NO_CLASS).all()
    assert (result.probability[bad] == 0).all() and (result.entropy[bad] == 1).all()
    assert not result.embedding[bad].any()
    good = result.valid
    assert good.sum() >= n - 2 - 0.05 * n  # only the range limits drop a few more
    assert (result.class_id[good] < len(pipeline.class_names)).all()
    assert ((result.probability[good] > 0) & (result.probability[good] <= 1)).all()
    assert ((result.entropy[good] >= 0) & (result.entropy[good] <= 1)).all()
    # Points sharing a voxel share its output: the per-voxel embedding gathered by point_voxel.
    np.testing.assert_array_equal(result.embedding[good], result.voxel_embedding[result.point_voxel[good]])
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess"}


def test_process_is_deterministic_and_matches_the_offline_model(pipeline, scan, checkpoint_path):
    from ssl3d_ros.checkpoint import load_checkpoint
    from ssl3d_ros.models.heads import segment_outputs
    from ssl3d_ros.preprocessing import collate, preprocess, unpool

    first, second = pipeline.process(scan), pipeline.process(scan)
    np.testing.assert_array_equal(first.class_id, second.class_id)
    np.testing.assert_array_equal(first.embedding, second.embedding)

    # The same computation spelled out with the core modules, independently of the pipeline.
    ckpt = load_checkpoint(checkpoint_path, device="cpu", backend=CPU_BACKEND)
    with torch.inference_mode():
        vox = preprocess(scan, ckpt.preprocessing)
        out = ckpt.encoder.eval()(collate([vox]))
        point_feats = unpool(ckpt.encoder.hypercolumn(out), vox.point_voxel)
        seg = segment_outputs(ckpt.seg_head(point_feats), vox.point_valid)
    np.testing.assert_array_equal(first.valid, vox.point_valid.numpy())
    np.testing.assert_allclose(first.embedding, point_feats.numpy(), atol=1e-5)
    np.testing.assert_array_equal(first.class_id, seg.class_id.numpy())
    np.testing.assert_allclose(first.probability, seg.probability.numpy(), atol=1e-5)


def test_process_cloud_keeps_the_message_order_with_nan_points(pipeline, scan):
    noisy, bad = _with_bad_points(scan)
    encoded = encode_cloud(noisy.points, {"intensity": noisy.fields["intensity"]}, height=1)
    msg = fill_cloud_message(SimpleNamespace(), encoded, lambda **kw: FieldSpec(**kw))
    cloud = pipeline.process_cloud(msg)
    assert cloud.xyz.shape == (len(noisy), 3) and cloud.height == 1 and cloud.width == len(noisy)
    np.testing.assert_array_equal(cloud.xyz[~np.isnan(cloud.xyz).any(1)], noisy.points[~np.isnan(noisy.points).any(1)])
    assert np.isnan(cloud.xyz[5]).all()  # the NaN point stays in place
    direct = pipeline.process(noisy)  # the NaN point is dropped by the decoder, then put back
    np.testing.assert_array_equal(cloud.result.class_id, direct.class_id)
    np.testing.assert_array_equal(cloud.result.valid, direct.valid)
    np.testing.assert_allclose(cloud.result.embedding, direct.embedding, atol=1e-6)


def test_missing_intensity_field_is_a_cloud_format_error_when_asked_to_reject(pipeline, scan):
    from ssl3d_ros.codec import CloudFormatError

    encoded = encode_cloud(scan.points, {"reflectivity": scan.fields["intensity"]})
    msg = fill_cloud_message(SimpleNamespace(), encoded, lambda **kw: FieldSpec(**kw))
    strict = PerceptionPipeline.from_checkpoint(
        pipeline.source, device="cpu", overrides=node_config_from_params({"input.missing_intensity": "reject"}))
    with pytest.raises(CloudFormatError, match="input.intensity_field"):
        strict.process_cloud(msg)


def test_a_cloud_without_intensity_is_fed_zeros_by_default(pipeline, scan):
    xyz_only = fill_cloud_message(SimpleNamespace(), encode_cloud(scan.points), lambda **kw: FieldSpec(**kw))
    cloud = pipeline.process_cloud(xyz_only)
    assert cloud.intensity_missing and cloud.result.num_valid > 0.9 * len(scan)
    zeros = pipeline.process(Scan(points=scan.points, fields={"intensity": np.zeros(len(scan), np.float32)},
                                  intensity_scale=1.0))
    np.testing.assert_array_equal(cloud.result.class_id, zeros.class_id)
    none = PerceptionPipeline.from_checkpoint(  # '' = no intensity field: zeros as its description says
        pipeline.source, device="cpu", overrides=node_config_from_params({"input.intensity_field": ""}))
    with_field = fill_cloud_message(SimpleNamespace(), encode_cloud(scan.points, {"intensity": scan.fields["intensity"]}),
                                    lambda **kw: FieldSpec(**kw))
    np.testing.assert_array_equal(none.process_cloud(with_field).result.class_id, zeros.class_id)


def test_intensity_field_mapping_and_pca_reduced_embeddings(checkpoint_path, scan):
    cfg = node_config_from_params({"input.intensity_field": "reflectivity", "embeddings.dims": 3})
    pipe = PerceptionPipeline.from_checkpoint(checkpoint_path, device="cpu", overrides=cfg)
    assert pipe.embedding_channels == 3
    encoded = encode_cloud(scan.points, {"reflectivity": scan.fields["intensity"]})
    msg = fill_cloud_message(SimpleNamespace(), encoded, lambda **kw: FieldSpec(**kw))
    cloud = pipe.process_cloud(msg)
    assert cloud.result.embedding.shape == (len(scan), 3)
    full = PerceptionPipeline.from_checkpoint(checkpoint_path, device="cpu").process(scan)
    np.testing.assert_array_equal(cloud.result.class_id, full.class_id)  # same model input


def test_reduced_embeddings_and_classes_read_out_level_by_level_equal_the_hypercolumn_model(checkpoint_path, scan):
    """The head and the PCA are applied per level in one fused call: the same numbers as the
    hypercolumn model spelled out by hand, and the same classes as a frame without embeddings."""
    from ssl3d_ros.checkpoint import load_checkpoint
    from ssl3d_ros.preprocessing import collate, preprocess

    pipe = PerceptionPipeline.from_checkpoint(checkpoint_path, device="cpu",
                                              overrides=node_config_from_params({"embeddings.dims": 3}))
    both = pipe.process(scan, point_embeddings=False)
    seg_only = pipe.process(scan, embeddings=False)
    np.testing.assert_array_equal(both.class_id, seg_only.class_id)
    np.testing.assert_allclose(both.probability, seg_only.probability, atol=1e-6)
    assert seg_only.voxel_embedding is None and both.embedding is None

    ckpt = load_checkpoint(checkpoint_path, device="cpu", backend=CPU_BACKEND)
    with torch.inference_mode():
        vox = preprocess(scan, ckpt.preprocessing)
        hyper = ckpt.encoder.eval().hypercolumn(ckpt.encoder(collate([vox])))
        by_hand = ckpt.pca(hyper)[:, :3].numpy()
    assert both.voxel_embedding.shape == by_hand.shape
    np.testing.assert_allclose(both.voxel_embedding, by_hand, atol=1e-4, rtol=1e-4)


def test_parameters_that_do_not_fit_the_checkpoint_fail_clearly(checkpoint_path, tmp_path):
    with pytest.raises(ConfigError, match="classes.names"):
        PerceptionPipeline.from_checkpoint(
            checkpoint_path, device="cpu", overrides=node_config_from_params({"classes.names": ["a", "b"]}))
    with pytest.raises(ConfigError, match="obstacle_classes"):
        cfg = node_config_from_params({"occupancy.obstacle_classes": ["bus"]})
        pipe = PerceptionPipeline.from_checkpoint(checkpoint_path, device="cpu", overrides=cfg)
        OutputEncoder.for_classes(pipe.class_names, pipe.class_colors, cfg)
    no_pca = make_checkpoint(tmp_path / "no_pca.safetensors", with_head=True, with_pca=False)
    with pytest.raises(ConfigError, match="embeddings.dims"):
        PerceptionPipeline.from_checkpoint(no_pca, device="cpu", overrides=node_config_from_params({"embeddings.dims": 2}))


def test_kmeans_segments_without_a_head_keep_their_ids_across_frames(tmp_path, scan):
    path = make_checkpoint(tmp_path / "encoder_only.safetensors", with_head=False, with_pca=False)
    cfg = node_config_from_params({"kmeans.clusters": 6})
    pipe = PerceptionPipeline.from_checkpoint(path, device="cpu", overrides=cfg)
    pipe.warm_up(points=2000, iterations=1)
    assert pipe.class_names == [f"segment_{i}" for i in range(6)]
    first = pipe.process(scan)
    second = pipe.process(scan)  # centroids moved a little towards this frame: same ids
    good = first.valid
    assert set(np.unique(first.class_id[good])) <= set(range(6))
    assert len(np.unique(first.class_id[good])) >= 2
    agreement = np.mean(first.class_id[good] == second.class_id[good])
    assert agreement > 0.97
    assert ((first.probability[good] > 0) & (first.probability[good] <= 1)).all()


def test_real_kitti_scan(pipeline, shared_data):
    raw = np.fromfile(shared_data / "lidar" / "kitti" / "004139.bin", dtype=np.float32).reshape(-1, 4)[::4]
    scan = Scan(points=raw[:, :3], fields={"intensity": raw[:, 3]}, intensity_scale=1.0, source="kitti")
    result = pipeline.process(scan)
    assert result.class_id.shape == (len(scan),)
    assert result.valid.mean() > 0.9
    assert (result.class_id[~result.valid] == NO_CLASS).all()
    assert math.isfinite(float(result.embedding.sum()))


def test_empty_and_all_invalid_scans(pipeline):
    empty = pipeline.process(Scan(points=np.zeros((0, 3), np.float32), fields={"intensity": np.zeros(0, np.float32)}))
    assert empty.class_id.shape == (0,) and empty.embedding.shape == (0, pipeline.embedding_channels)
    nan = np.full((5, 3), np.nan, np.float32)
    invalid = pipeline.process(Scan(points=nan, fields={"intensity": np.zeros(5, np.float32)}))
    assert (invalid.class_id == NO_CLASS).all() and not invalid.valid.any()
    assert not invalid.embedding.any() and (invalid.entropy == 1).all()


def test_empty_checkpoint_parameter_means_the_packaged_default():
    from ssl3d_ros.checkpoint import PACKAGED_CHECKPOINT, packaged_checkpoint

    try:
        path = packaged_checkpoint()
    except ConfigError as exc:  # not produced yet in this checkout: the error says what to do
        assert PACKAGED_CHECKPOINT in str(exc) and "checkpoint:=" in str(exc)
        with pytest.raises(ConfigError, match="packaged default checkpoint"):
            PerceptionPipeline.from_checkpoint(None, device="cpu")
        return
    assert path.name == PACKAGED_CHECKPOINT
    pipe = PerceptionPipeline.from_checkpoint(None, device="cpu")
    assert pipe.source == str(path)


def test_preprocessing_overrides_replace_the_checkpoint_values(checkpoint_path, scan):
    default = PerceptionPipeline.from_checkpoint(checkpoint_path, device="cpu")
    assert default.preprocess_cfg.voxel_size == 0.5 and default.preprocess_cfg.max_range == 60.0
    cfg = node_config_from_params({
        "preprocessing.voxel_size": 1.0, "preprocessing.max_range": 20.0, "preprocessing.min_range": 2.0,
        "preprocessing.max_points": 300, "input.intensity_scale": 255.0,
    })
    pipe = PerceptionPipeline.from_checkpoint(checkpoint_path, device="cpu", overrides=cfg)
    pre = pipe.preprocess_cfg
    assert (pre.voxel_size, pre.max_range, pre.min_range, pre.max_points, pre.intensity_scale) == (1.0, 20.0, 2.0, 300, 255.0)
    result = pipe.process(scan)
    assert len(result.voxel_coord) <= 300
    ranges = np.linalg.norm(scan.points, axis=1)
    assert not result.valid[(ranges > 20.0) | (ranges < 2.0)].any()
