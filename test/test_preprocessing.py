"""The one preprocessing path: voxel sampling, dropped-point mask, features, batching, un-pooling."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl3d_ros.config import ConfigError, from_dict, to_dict
from ssl3d_ros.preprocessing import (
    PreprocessConfig,
    batch_point_voxel,
    collate,
    estimate_normals,
    feature_channels,
    low_quantile,
    preprocess,
    resolve_intensity_scale,
    unpool,
)
from ssl3d_ros.scan import Scan


def lidar_like_scan(n: int = 4000, seed: int = 0, intensity_full_scale: float = 1.0) -> Scan:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-20, 20, size=(n, 3)).astype(np.float32)
    points[:, 2] *= 0.1
    intensity = (rng.uniform(0, 0.99, size=n) * intensity_full_scale).astype(np.float32)
    return Scan(points=points, fields={"intensity": intensity}, source=f"synthetic#{seed}")


def with_bad_points(scan: Scan) -> tuple[Scan, np.ndarray]:
    """NaN, Inf, absurd and (0, 0, 0) points at known places; returns the scan and the bad mask."""
    points = scan.points.copy()
    bad = np.zeros(len(points), dtype=bool)
    points[3] = [np.nan, 0, 0]
    points[10] = [0, np.inf, 0]
    points[11] = [0, 0, -np.inf]
    points[20] = [1e30, 0, 0]
    points[21] = [0, 0, 0]  # no-return placeholder of organised clouds
    bad[[3, 10, 11, 20, 21]] = True
    intensity = scan.fields["intensity"].copy()
    intensity[30] = np.nan
    bad[30] = True
    return Scan(points=points, fields={"intensity": intensity}, source=scan.source), bad


def test_inference_is_deterministic_and_keeps_the_first_point_of_each_voxel():
    scan, bad = with_bad_points(lidar_like_scan())
    cfg = PreprocessConfig(voxel_size=0.5)
    first = preprocess(scan, cfg)
    second = preprocess(scan, cfg)
    for field in ("grid_coord", "coord", "feat", "point_voxel", "point_valid", "voxel_point"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field

    assert first.point_voxel.shape == (len(scan),)
    assert torch.equal(first.point_valid, torch.from_numpy(~bad))
    assert (first.point_voxel[torch.from_numpy(bad)] == -1).all()

    # Independent reference: numpy's unique(return_index) gives the first occurrence of each voxel.
    good = np.flatnonzero(~bad)
    grid = np.floor(scan.points[good] / 0.5).astype(np.int64)
    ref_voxels, ref_first = np.unique(grid, axis=0, return_index=True)
    assert len(first) == len(ref_voxels)
    got_order = np.lexsort(first.grid_coord.numpy().T[::-1])
    assert np.array_equal(first.grid_coord.numpy()[got_order], ref_voxels)
    assert np.array_equal(first.voxel_point.numpy()[got_order], good[ref_first])
    assert torch.equal(first.coord, torch.from_numpy(scan.points)[first.voxel_point])

    # Every valid point lies in the voxel it maps to.
    pv = first.point_voxel[first.point_valid]
    own_grid = torch.floor(torch.from_numpy(scan.points[good]) / 0.5).to(torch.int32)
    assert torch.equal(first.grid_coord[pv], own_grid)


def test_input_order_is_kept_under_a_permutation_of_the_points():
    scan = lidar_like_scan(seed=1)
    cfg = PreprocessConfig(voxel_size=0.4)
    perm = np.random.default_rng(5).permutation(len(scan))
    base = preprocess(scan, cfg)
    permuted = preprocess(scan.select(perm), cfg)
    # Per-point outputs follow their points: unpool the voxel coordinates back to points.
    base_cells = unpool(base.grid_coord.float(), base.point_voxel)
    perm_cells = unpool(permuted.grid_coord.float(), permuted.point_voxel)
    assert torch.equal(base_cells[torch.from_numpy(perm)], perm_cells)
    assert len(base) == len(permuted)


def test_training_choice_is_random_per_seed_and_keeps_one_point_per_voxel():
    scan = lidar_like_scan(n=6000, seed=2)
    cfg = PreprocessConfig(voxel_size=1.0)
    inference = preprocess(scan, cfg)
    runs = {seed: preprocess(scan, cfg, training=True, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)}
    again = preprocess(scan, cfg, training=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(runs[1].voxel_point, again.voxel_point)
    assert not torch.equal(runs[1].voxel_point, runs[2].voxel_point)
    points = torch.from_numpy(scan.points)
    for vox in runs.values():
        # Same voxel set as inference, one kept point per voxel, lying in it.
        assert torch.equal(vox.grid_coord, inference.grid_coord)
        assert torch.unique(vox.grid_coord, dim=0).shape[0] == len(vox)
        assert torch.equal(torch.floor(points[vox.voxel_point] / 1.0).to(torch.int32), vox.grid_coord)
        assert torch.equal(vox.point_voxel, inference.point_voxel)


def test_intensity_normalisation_is_the_same_for_0_1_and_0_255_sensors():
    kitti_like = lidar_like_scan(seed=3)
    ouster_like = Scan(points=kitti_like.points, fields={"intensity": kitti_like.fields["intensity"] * 255})
    photon_counts = Scan(
        points=kitti_like.points,
        fields={"intensity": np.round(kitti_like.fields["intensity"] * 65535).astype(np.uint16)},
    )
    cfg = PreprocessConfig(voxel_size=0.3, features=("intensity",))
    a = preprocess(kitti_like, cfg)
    b = preprocess(ouster_like, dataclasses.replace(cfg, intensity_scale=255))
    c = preprocess(ouster_like, cfg)  # auto: max > 1 -> 255
    d = preprocess(photon_counts, cfg)  # auto: max > 255 -> 65535
    assert (a.intensity_scale, b.intensity_scale, c.intensity_scale, d.intensity_scale) == (1.0, 255.0, 255.0, 65535.0)
    torch.testing.assert_close(a.feat, b.feat)
    torch.testing.assert_close(a.feat, c.feat)
    torch.testing.assert_close(a.feat, d.feat, atol=1e-4, rtol=0)
    # The scan's own declared scale wins over inference from values.
    declared = dataclasses.replace(ouster_like, intensity_scale=65535.0)
    assert resolve_intensity_scale(declared, cfg) == 65535.0
    assert resolve_intensity_scale(Scan(points=np.zeros((2, 3)), fields={"intensity": np.array([0, 3], np.uint8)}), cfg) == 255.0


@pytest.mark.parametrize(
    "relpath, columns, expected_scale",
    [
        ("lidar/kitti/004139.bin", 4, 1.0),
        ("lidar/ouster/OS-1-128_v2.3.0_1024x10_lb_n3_frame00.xyzi.bin", 4, 255.0),
        ("lidar/ouster/OS-0-32-U1_v2.2.0_1024x10_frame00.xyzi.bin", 4, 255.0),
        ("lidar/nuscenes/lidar_top_1532402927647951.pcd.bin", 5, 255.0),
    ],
)
def test_auto_intensity_scale_on_real_sensors(shared_data, relpath, columns, expected_scale):
    raw = np.fromfile(shared_data / relpath, dtype=np.float32).reshape(-1, columns)
    scan = Scan(points=raw[:, :3], fields={"intensity": raw[:, 3]}, source=relpath)
    vox = preprocess(scan, PreprocessConfig(voxel_size=0.1, features=("xyz", "intensity", "range"), coord_scale=50.0))
    assert vox.intensity_scale == expected_scale
    intensity = vox.feat[:, 3]
    assert 0.0 <= float(intensity.min()) and float(intensity.max()) <= 1.0
    assert float(intensity.max()) > 0.3  # the scale is not wildly too large
    # Dropped: non-finite and the (0, 0, 0) no-return placeholders (many in the Ouster frames).
    returns = np.isfinite(raw[:, :3]).all(axis=1) & (raw[:, :3] != 0).any(axis=1)
    assert np.array_equal(vox.point_valid.numpy(), returns)


def test_real_scannet_rgb_becomes_unit_range(shared_data):
    vert = np.load(shared_data / "indoor/scannet/scene0000_00_vert_all.npy")
    scan = Scan(points=vert[:, :3], fields={"rgb": vert[:, 3:6].astype(np.uint8)})
    vox = preprocess(scan, PreprocessConfig(voxel_size=0.05, features=("xyz", "rgb")))
    rgb = vox.feat[:, 3:6]
    assert 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0 and float(rgb.max()) > 0.5
    assert torch.allclose(rgb, torch.from_numpy(vert[vox.voxel_point.numpy(), 3:6] / 255.0).float())


def test_crop_box_and_range_limits_drop_points():
    scan = lidar_like_scan(seed=4)
    cfg = PreprocessConfig(voxel_size=0.2, crop_box=(-5, -5, -1, 5, 10, 1), min_range=1.0, max_range=8.0)
    vox = preprocess(scan, cfg)
    p = scan.points
    r = np.linalg.norm(p, axis=1)
    inside = (p[:, 0] >= -5) & (p[:, 0] <= 5) & (p[:, 1] >= -5) & (p[:, 1] <= 10) & (np.abs(p[:, 2]) <= 1)
    expected = inside & (r >= 1.0) & (r <= 8.0)
    assert expected.sum() > 50 and (~expected).sum() > 50
    assert np.array_equal(vox.point_valid.numpy(), expected)
    with pytest.raises(ConfigError, match="crop_box"):
        PreprocessConfig(crop_box=(0, 0, 0, -1, 1, 1))
    with pytest.raises(ConfigError, match="max_range"):
        PreprocessConfig(min_range=5.0, max_range=2.0)


def test_unpool_keeps_input_order_and_zeroes_dropped_points():
    scan, bad = with_bad_points(lidar_like_scan(seed=5))
    vox = preprocess(scan, PreprocessConfig(voxel_size=0.5))
    hypercolumn = torch.randn(len(vox), 7)
    per_point = unpool(hypercolumn, vox.point_voxel)
    assert per_point.shape == (len(scan), 7)
    assert (per_point[torch.from_numpy(bad)] == 0).all()
    valid = vox.point_valid
    assert torch.equal(per_point[valid], hypercolumn[vox.point_voxel[valid]])
    # The kept point of each voxel reads back its own voxel's features.
    assert torch.equal(per_point[vox.voxel_point], hypercolumn)


def test_collate_offsets_batches_and_unpools_per_scan():
    scans = [preprocess(lidar_like_scan(n=n, seed=s), PreprocessConfig(voxel_size=0.5)) for n, s in ((500, 6), (800, 7))]
    batch = collate(scans)
    sizes = [len(v) for v in scans]
    assert batch.batch_size == 2 and batch.coords.dtype == torch.int32
    assert torch.equal(batch.offset, torch.tensor([sizes[0], sizes[0] + sizes[1]]))
    assert (batch.coords[:, 1:] >= 0).all()
    for b, vox in enumerate(scans):
        part = batch.coords[batch.coords[:, 0] == b, 1:]
        assert torch.equal(part, vox.grid_coord - vox.grid_coord.min(dim=0).values)
    assert batch.feats.shape == (sum(sizes), feature_channels(PreprocessConfig()))
    per_point = unpool(batch.feats, batch_point_voxel(scans))
    expected = torch.cat([unpool(v.feat, v.point_voxel) for v in scans])
    assert torch.equal(per_point, expected)


@pytest.mark.parametrize("features", [("xyz",), ("xyz", "height", "intensity", "range"), ("range", "normal", "intensity")])
def test_feature_channels_match_the_features(features):
    cfg = PreprocessConfig(voxel_size=0.5, features=features, coord_scale=20.0)
    vox = preprocess(lidar_like_scan(n=1500, seed=8), cfg)
    assert vox.feat.shape == (len(vox), feature_channels(cfg))
    assert vox.feat.dtype == torch.float32 and torch.isfinite(vox.feat).all()


def test_estimated_normals_of_a_floor_point_up_towards_the_sensor():
    rng = np.random.default_rng(9)
    floor = np.column_stack([rng.uniform(-3, 3, 5000), rng.uniform(-3, 3, 5000), np.full(5000, -1.5)]).astype(np.float32)
    vox = preprocess(Scan(points=floor), PreprocessConfig(voxel_size=0.1, features=("normal",)))
    normals = vox.feat
    defined = normals.norm(dim=1) > 0
    assert defined.float().mean() > 0.9
    torch.testing.assert_close(normals[defined], torch.tensor([0.0, 0.0, 1.0]).expand(int(defined.sum()), 3), atol=1e-4, rtol=0)
    # A tilted wall: normals agree with the plane's and face the origin (the sensor).
    true_normal = torch.tensor([1.0, 2.0, 0.5]) / torch.tensor([1.0, 2.0, 0.5]).norm()
    u = torch.linalg.cross(true_normal, torch.tensor([0.0, 0.0, 1.0]))
    u = u / u.norm()
    v = torch.linalg.cross(true_normal, u)
    ab = torch.from_numpy(rng.uniform(-2, 2, size=(4000, 2))).float()
    wall = 4.0 * true_normal + ab[:, :1] * u + ab[:, 1:] * v
    vox = preprocess(Scan(points=wall.numpy()), PreprocessConfig(voxel_size=0.1, features=("normal",)))
    defined = vox.feat.norm(dim=1) > 0
    assert defined.float().mean() > 0.9
    assert ((vox.feat[defined] @ true_normal) < -0.999).all()
    # Directly, too: voxels with fewer than 3 neighbours get no normal.
    lonely = estimate_normals(torch.tensor([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]), torch.tensor([[0, 0, 0], [50, 50, 50]]))
    assert (lonely == 0).all()


def test_max_points_caps_voxels_deterministically_at_inference():
    scan = lidar_like_scan(n=3000, seed=10)
    cfg = PreprocessConfig(voxel_size=0.2, max_points=500)
    a, b = preprocess(scan, cfg), preprocess(scan, cfg)
    assert len(a) == 500 and torch.equal(a.voxel_point, b.voxel_point)
    assert int(a.point_valid.sum()) >= 500 and not a.point_valid.all()
    assert a.point_voxel.max() == 499
    t = preprocess(scan, cfg, training=True, generator=torch.Generator().manual_seed(3))
    assert len(t) == 500 and not torch.equal(t.voxel_point, a.voxel_point)


def test_missing_feature_field_is_an_error_unless_zero_filling_is_asked_for():
    scan = Scan(points=np.random.default_rng(11).normal(size=(100, 3)).astype(np.float32), source="no-intensity.npy")
    with pytest.raises(ValueError, match="no-intensity.npy.*intensity"):
        preprocess(scan, PreprocessConfig())
    vox = preprocess(scan, PreprocessConfig(missing_features="zero"))
    assert (vox.feat[:, 3] == 0).all() and vox.intensity_scale is None


def test_config_round_trip_and_rejections():
    cfg = PreprocessConfig(voxel_size=0.1, crop_box=(-1, -2, -3, 1, 2, 3), features=("xyz", "rgb"), intensity_scale=255)
    assert from_dict(PreprocessConfig, to_dict(cfg)) == cfg
    assert from_dict(PreprocessConfig, {"intensity_scale": "auto"}).intensity_scale == "auto"
    for bad in ({"features": ["xyz", "colour"]}, {"voxel_size": 0}, {"intensity_scale": "max"}, {"voxel": 0.1}, {"features": []}):
        with pytest.raises(ConfigError):
            from_dict(PreprocessConfig, bad)


def test_empty_and_all_dropped_scans():
    cfg = PreprocessConfig(voxel_size=0.1, features=("xyz", "height", "range"))
    empty = preprocess(Scan(points=np.zeros((0, 3), np.float32)), cfg)
    assert len(empty) == 0 and empty.feat.shape == (0, feature_channels(cfg))
    nan = preprocess(Scan(points=np.full((5, 3), np.nan, np.float32)), cfg)
    assert len(nan) == 0 and not nan.point_valid.any()
    assert unpool(torch.zeros(0, 4), nan.point_voxel).shape == (5, 4)
    assert collate([empty, nan]).coords.shape == (0, 4)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    voxel=st.sampled_from([0.05, 0.3, 2.0]),
    seed=st.integers(0, 2**31 - 1),
    training=st.booleans(),
)
def test_voxelization_invariants_hold_for_any_cloud(n, voxel, seed, training):
    rng = np.random.default_rng(seed)
    points = (rng.normal(size=(n, 3)) * rng.choice([0.1, 3.0, 60.0])).astype(np.float32)
    points[rng.random(n) < 0.1] = np.nan
    vox = preprocess(Scan(points=points), PreprocessConfig(voxel_size=voxel, features=("xyz",)),
                     training=training, generator=torch.Generator().manual_seed(seed % 1000))
    finite = np.isfinite(points).all(axis=1)
    assert np.array_equal(vox.point_valid.numpy(), finite)
    assert torch.unique(vox.grid_coord, dim=0).shape[0] == len(vox)
    if finite.any():
        pv = vox.point_voxel[vox.point_valid]
        cells = torch.floor(torch.from_numpy(points[finite]) / voxel).to(torch.int32)
        assert torch.equal(vox.grid_coord[pv], cells)
        assert torch.equal(vox.point_voxel[vox.voxel_point], torch.arange(len(vox)))


@pytest.mark.parametrize("features", [("xyz", "intensity"), ("xyz", "height", "intensity", "rgb")])
def test_a_scan_without_points_gives_no_voxels(features):
    empty = Scan(np.zeros((0, 3), np.float32),
                 {"intensity": np.zeros(0, np.float32), "rgb": np.zeros((0, 3), np.uint8)})
    vox = preprocess(empty, PreprocessConfig(voxel_size=0.1, features=features, intensity_scale=1.0))
    assert vox.feat.shape == (0, feature_channels(PreprocessConfig(features=features)))
    assert vox.point_voxel.shape == (0,) and vox.point_valid.shape == (0,)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 4097])
@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5])
def test_low_quantile_equals_torch_quantile(n, q):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(low_quantile(values, q), torch.quantile(values, q))
    with pytest.raises(ValueError):
        low_quantile(values, 0.9)


def test_constant_feature_keeps_height_magnitude_through_the_layernorm_stem():
    """A lone ``height`` channel reaches the nano stem (1x1 conv without bias, then LayerNorm) as its
    sign only; with the ``constant`` channel beside it, different heights give different stem outputs."""
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.preprocessing import collate

    pts = np.array([[1, 0, 0.0], [5, 0, 0.5], [10, 0, 2.0], [15, 0, 4.0]], dtype=np.float32)  # (0,0,0) is no return
    scan = Scan(points=pts, fields={}, source="heights")

    def stem_output(features):
        cfg = PreprocessConfig(voxel_size=0.1, features=features, coord_scale=1.0)
        vox = preprocess(scan, cfg)
        torch.manual_seed(0)
        enc = SparseEncoder(EncoderConfig(size="nano", in_channels=len(features))).eval()
        with torch.no_grad():
            out = enc(collate([vox])).levels[0].feats
        return vox, out[vox.point_voxel[1:]]  # the three points above the ground level

    vox, only_height = stem_output(("height",))
    assert torch.allclose(only_height[0], only_height[2], atol=1e-3)  # 0.5 m and 4 m: the same (LayerNorm's eps aside)
    vox, with_constant = stem_output(("constant", "height"))
    assert torch.equal(vox.feat[:, 0], torch.ones(len(vox)))
    assert torch.allclose(vox.feat[vox.point_voxel, 1], torch.tensor([0.0, 0.5, 2.0, 4.0]), atol=0.05)
    assert float((with_constant[0] - with_constant[2]).abs().max()) > 0.05
