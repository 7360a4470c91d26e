"""Simulated LiDAR / depth camera: determinism, labels, sensor geometry, stamps, CLI round trip."""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open3d", reason="the simulator needs open3d (extra 'sim')")

from ssl3d_ros.config import ConfigError, from_dict, load_yaml  # noqa: E402
from ssl3d_ros.sim import (  # noqa: E402
    INDOOR_CLASSES, OUTDOOR_CLASSES, DepthCamera, SimConfig, SimSource, SpinningLidar, build_world, class_colors,
    default_lidar, simulate_depth_sequence, simulate_sequence, with_lidar,
)
from ssl3d_ros.sim import meshes  # noqa: E402
from ssl3d_ros.sim.raycast import LabelledScene  # noqa: E402

SMALL = dict(beams=16, columns=256)  # fast scans for tests that do not need full resolution
OUTDOOR = with_lidar(SimConfig(scene="outdoor"), **SMALL)
INDOOR = with_lidar(SimConfig(scene="indoor"), **SMALL)
GROUND = {"outdoor": ("road", "sidewalk", "terrain"), "indoor": ("floor",)}
CLASSES = {"outdoor": OUTDOOR_CLASSES, "indoor": INDOOR_CLASSES}


def scans_equal(a, b) -> bool:
    return (
        np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels)
        and a.fields.keys() == b.fields.keys()
        and all(np.array_equal(a.fields[k], b.fields[k]) for k in a.fields)
        and a.stamp_ns == b.stamp_ns and a.frame_id == b.frame_id
    )


@pytest.fixture(scope="module")
def sequences():
    """Three default-resolution scans per scene type (seed 0)."""
    return {name: list(simulate_sequence(SimConfig(scene=name), 3, seed=0)) for name in ("outdoor", "indoor")}


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_scans_and_different_seeds_differ():
    first = list(simulate_sequence(OUTDOOR, 2, seed=7))
    again = list(simulate_sequence(OUTDOOR, 2, seed=7))
    other = list(simulate_sequence(OUTDOOR, 2, seed=8))
    assert all(scans_equal(a, b) for a, b in zip(first, again))
    assert not scans_equal(first[0], other[0])
    # different layouts, not only different noise: the scene meshes differ
    assert not np.array_equal(build_world(OUTDOOR, 7, 0.2).scene.mesh.vertices,
                              build_world(OUTDOOR, 8, 0.2).scene.mesh.vertices)


def test_longer_sequence_starts_with_the_shorter_one():
    short = list(simulate_sequence(OUTDOOR, 2, seed=3))
    long = list(simulate_sequence(OUTDOOR, 40, seed=3))[:2]  # 20 m further: more street blocks built
    assert all(scans_equal(a, b) for a, b in zip(short, long))


def test_indoor_is_deterministic_and_seed_dependent():
    a = next(simulate_sequence(INDOOR, 1, seed=2))
    b = next(simulate_sequence(INDOOR, 1, seed=2))
    c = next(simulate_sequence(INDOOR, 1, seed=5))
    assert scans_equal(a, b)
    assert not scans_equal(a, c)


# ------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("scene", ["outdoor", "indoor"])
def test_every_class_appears_across_a_short_sequence(sequences, scene):
    seen = set(np.unique(np.concatenate([s.labels for s in sequences[scene]])).tolist())
    assert seen == set(range(1, len(CLASSES[scene]))), [CLASSES[scene][i] for i in seen]


@pytest.mark.parametrize("scene", ["outdoor", "indoor"])
@pytest.mark.parametrize("seed", [11, 12])
def test_every_class_appears_for_other_seeds(scene, seed):
    cfg = with_lidar(SimConfig(scene=scene), beams=32, columns=512)
    seen = set()
    for scan in simulate_sequence(cfg, 3, seed):
        seen |= set(np.unique(scan.labels).tolist())
    assert seen == set(range(1, len(CLASSES[scene])))


@pytest.mark.parametrize("scene", ["outdoor", "indoor"])
def test_labels_are_valid_class_ids_and_every_point_is_labelled(sequences, scene):
    for scan in sequences[scene]:
        assert scan.labels.dtype == np.int32
        assert scan.labels.min() >= 1  # 0 ("unlabeled") is never a returned point
        assert scan.labels.max() < len(CLASSES[scene])
    assert class_colors(scene).shape == (len(CLASSES[scene]), 3)


@pytest.mark.parametrize("scene", ["outdoor", "indoor"])
def test_flat_ground_classes_lie_at_ground_height(sequences, scene):
    height = default_lidar(scene).mount_height
    flat = CLASSES[scene].index("road" if scene == "outdoor" else "floor")
    for scan in sequences[scene]:
        z = scan.points[scan.labels == flat, 2]
        assert len(z) > 1000
        # range noise moves points along the ray, so a few cm at most; lane markings are 3 mm high
        assert np.abs(z + height).max() < 0.1


@pytest.mark.parametrize("scene", ["outdoor", "indoor"])
def test_ground_classes_dominate_near_ground_level(sequences, scene):
    height = default_lidar(scene).mount_height
    ground_ids = [CLASSES[scene].index(n) for n in GROUND[scene]]
    labels = np.concatenate([s.labels for s in sequences[scene]])
    z = np.concatenate([s.points[:, 2] for s in sequences[scene]])
    near_ground = z < -height + 0.08
    assert near_ground.sum() > 5000
    assert np.isin(labels[near_ground], ground_ids).mean() > 0.9
    # and well above the ground, ground classes are rare
    assert np.isin(labels[z > -height + 1.0], ground_ids).mean() < 0.1


@pytest.mark.parametrize("seed", range(6))
def test_outdoor_sensor_path_is_clear_of_objects(seed):
    # nothing may come within the ego car's half-width (0.9 m) plus a margin: parked and oncoming
    # cars pass at >= 1.2 m from the roof-mounted sensor, everything else is further away
    for scan in simulate_sequence(OUTDOOR, 2, seed):
        assert np.linalg.norm(scan.points, axis=1).min() > 1.2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_indoor_furniture_keeps_clear_of_the_loop(seed):
    world = build_world(INDOOR, seed, 1.0)
    mesh = world.scene.mesh
    furniture = ~np.isin(mesh.triangle_class, [INDOOR_CLASSES.index(n) for n in ("floor", "wall", "ceiling")])
    corners = mesh.vertices[np.unique(mesh.triangles[furniture])][:, :2]
    outline = world.path.outline(2048)
    nearest = np.min(np.linalg.norm(corners[:, None, :] - outline[None, :, :], axis=-1), axis=1)
    assert nearest.min() > INDOOR.indoor.path_clearance - 0.05


def test_rays_into_the_sky_give_no_points():
    sky = dataclasses.replace(OUTDOOR, lidar=SpinningLidar(beams=4, columns=64, fov_lower_deg=80.0, fov_upper_deg=89.0))
    scan = next(simulate_sequence(sky, 1, seed=0))
    assert len(scan) == 0
    assert scan.points.shape == (0, 3) and all(len(v) == 0 for v in scan.fields.values())
    world = build_world(OUTDOOR, 0, 0.1)
    xy, _ = world.path.pose(np.array([0.0]))  # in the driving lane, between lane markings
    origin = np.array([xy[0, 0], xy[0, 1], 2.0])
    hits = world.scene.cast(np.stack([origin, origin]), np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]))
    assert hits.hit.tolist() == [False, True]
    assert np.isinf(hits.distance[0]) and hits.label[0] == 0
    assert hits.distance[1] == pytest.approx(2.0, abs=1e-4) and OUTDOOR_CLASSES[hits.label[1]] == "road"


def test_intensity_is_in_unit_range_and_follows_material(sequences):
    for scene in ("outdoor", "indoor"):
        for scan in sequences[scene]:
            intensity = scan.fields["intensity"]
            assert intensity.dtype == np.float32 and scan.intensity_scale == 1.0
            assert intensity.min() >= 0.0 and intensity.max() <= 1.0
    labels = np.concatenate([s.labels for s in sequences["outdoor"]])
    intensity = np.concatenate([s.fields["intensity"] for s in sequences["outdoor"]])
    sign = intensity[labels == OUTDOOR_CLASSES.index("traffic-sign")].mean()
    road = intensity[labels == OUTDOOR_CLASSES.index("road")].mean()
    assert sign > 3 * road  # retro-reflective plates against dark asphalt


# ------------------------------------------------------------------------------ LiDAR geometry


@pytest.mark.parametrize("beams", [16, 64])
def test_lidar_rings_angles_and_ranges(beams):
    lidar = dataclasses.replace(default_lidar("indoor"), beams=beams, columns=360, min_range=1.0, max_range=6.0)
    scan = next(simulate_sequence(dataclasses.replace(INDOOR, lidar=lidar), 1, seed=4))
    ring = scan.fields["ring"]
    assert ring.dtype == np.uint16
    assert np.array_equal(np.unique(ring), np.arange(beams))  # a closed room returns on every beam
    distance = np.linalg.norm(scan.points.astype(np.float64), axis=1)
    assert distance.min() >= lidar.min_range and distance.max() <= lidar.max_range
    elevation = np.degrees(np.arcsin(scan.points[:, 2] / distance))
    assert elevation.min() >= lidar.fov_lower_deg - 1e-3 and elevation.max() <= lidar.fov_upper_deg + 1e-3
    # each point lies on its own beam's cone (noise moves points along the ray only)
    assert np.allclose(np.radians(elevation), lidar.elevations()[ring], atol=1e-4)
    time = scan.fields["time"]
    assert time.dtype == np.float32 and time.min() >= 0.0 and time.max() < 1.0 / lidar.rate_hz
    assert np.all(np.diff(time) >= 0)  # firing order


def test_lidar_point_count_matches_rays_minus_losses():
    lidar = dataclasses.replace(default_lidar("indoor"), beams=32, columns=512, dropout_prob=0.1)
    scan = next(simulate_sequence(dataclasses.replace(INDOOR, lidar=lidar), 1, seed=1))
    rays = 32 * 512
    assert 0.85 * rays < len(scan) < 0.95 * rays  # every ray hits the room; ~10 % dropped


def test_default_outdoor_scan_size_is_cpu_friendly(sequences):
    for scan in sequences["outdoor"]:
        assert 15_000 < len(scan) < 32 * 1024
        assert scan.frame_id == "lidar"


def test_motion_distortion_moves_late_columns():
    still = dataclasses.replace(OUTDOOR.lidar, motion_distortion=False)
    moving = next(simulate_sequence(OUTDOOR, 2, seed=0))
    frozen = next(simulate_sequence(dataclasses.replace(OUTDOOR, lidar=still), 2, seed=0))
    assert not np.array_equal(moving.points, frozen.points)
    assert np.all(frozen.fields["time"] == 0.0)


def test_custom_beam_table_sets_the_ring_elevations():
    table = (-20.0, -10.0, -5.0, -2.0, 0.0, 5.0)
    lidar = dataclasses.replace(default_lidar("indoor"), beams=6, columns=128, elevations_deg=table)
    scan = next(simulate_sequence(dataclasses.replace(INDOOR, lidar=lidar), 1, seed=0))
    elevation = np.degrees(np.arcsin(scan.points[:, 2] / np.linalg.norm(scan.points, axis=1)))
    assert np.allclose(elevation, np.array(table)[scan.fields["ring"]], atol=1e-2)
    with pytest.raises(ValueError, match="ascending"):
        SpinningLidar(beams=2, elevations_deg=(1.0, 0.0))


def test_lidar_poses_put_scans_into_one_world_frame():
    world = build_world(OUTDOOR, 0, 1.0)
    road = OUTDOOR_CLASSES.index("road")
    previous = None
    for k in range(3):
        scan = world.lidar_scan(k)
        pose = world.lidar_pose(k)
        ground = scan.points[scan.labels == road]
        in_world = ground @ pose[:3, :3].T + pose[:3, 3]
        assert np.abs(in_world[:, 2]).max() < 0.1  # the road is the plane z = 0
        if previous is not None:
            assert np.linalg.norm(pose[:3, 3] - previous[:3, 3]) == pytest.approx(0.5, rel=0.02)  # 5 m/s at 10 Hz
        previous = pose


def test_mounting_tilt_shows_in_the_sensor_frame_and_cancels_in_the_world_frame():
    tilted = with_lidar(OUTDOOR, mount_pitch_deg=2.0, mount_roll_deg=-1.0)
    world = build_world(tilted, 0, 0.5)
    scan = world.lidar_scan(1)
    road = scan.points[scan.labels == OUTDOOR_CLASSES.index("road")]
    assert np.ptp(road[:, 2]) > 0.3  # a tilted sensor sees the road as a slanted plane
    pose = world.lidar_pose(1)
    assert np.abs((road @ pose[:3, :3].T + pose[:3, 3])[:, 2]).max() < 0.1


def test_sim_source_is_lazy_indexable_and_picklable():
    source = SimSource(OUTDOOR, 3, seed=4)
    clone = pickle.loads(pickle.dumps(source))  # what a DataLoader worker receives
    expected = list(simulate_sequence(OUTDOOR, 3, seed=4))
    assert len(clone) == 3 and scans_equal(clone[2], expected[2]) and scans_equal(source[-1], expected[2])
    assert source.describe(1) == "sim:outdoor:seed4#1"
    with pytest.raises(IndexError):
        source[3]


# ------------------------------------------------------------------------------ stamps


def test_stamps_are_10_hz_from_a_fixed_epoch():
    cfg = dataclasses.replace(OUTDOOR, start_stamp_ns=1_600_000_000_000_000_000)
    stamps = [s.stamp_ns for s in simulate_sequence(cfg, 5, seed=0)]
    assert stamps[0] == cfg.start_stamp_ns
    assert np.all(np.diff(stamps) == 100_000_000)


# ------------------------------------------------------------------------------ depth camera


@pytest.mark.parametrize("scene", ["outdoor", "indoor"])
def test_depth_camera_gives_an_organized_cloud_with_nan_holes(scene):
    camera = DepthCamera(width=64, height=48, hfov_deg=80.0, max_range=8.0, dropout_prob=0.05)
    cfg = dataclasses.replace(SimConfig(scene=scene), depth_camera=camera)
    frames = list(simulate_depth_sequence(cfg, 2, seed=0))
    frame = frames[0]
    assert frame.points.shape == (48, 64, 3) and frame.labels.shape == (48, 64)
    assert frame.height == 48 and frame.width == 64
    holes = ~frame.valid
    assert 0 < holes.sum() < holes.size
    assert np.all(np.isnan(frame.points[holes])) and np.all(frame.labels[holes] == 0)
    assert np.all(np.isfinite(frame.points[~holes])) and np.all(frame.labels[~holes] >= 1)
    z = frame.points[..., 2][~holes]
    assert z.min() >= camera.min_range and z.max() <= camera.max_range
    # valid points project back onto their own pixel
    focal = (camera.width / 2) / np.tan(np.radians(camera.hfov_deg) / 2)
    v, u = np.nonzero(~holes)
    p = frame.points[~holes]
    assert np.allclose(focal * p[:, 0] / p[:, 2] + (camera.width - 1) / 2, u, atol=1e-3)
    assert np.allclose(focal * p[:, 1] / p[:, 2] + (camera.height - 1) / 2, v, atol=1e-3)
    assert frames[1].stamp_ns - frame.stamp_ns == 100_000_000
    organized = frame.to_scan(keep_invalid=True)
    assert len(organized) == 48 * 64
    dense = frame.to_scan()
    assert len(dense) == (~holes).sum() and np.isfinite(dense.points).all()


def test_depth_camera_looks_down_at_the_floor():
    camera = DepthCamera(width=32, height=24, tilt_deg=30.0)
    frame = next(simulate_depth_sequence(dataclasses.replace(INDOOR, depth_camera=camera), 1, seed=0))
    # optical frame: y points down, so the bottom rows see the floor
    assert np.mean(frame.labels[-4:] == INDOOR_CLASSES.index("floor")) > 0.9


# ------------------------------------------------------------------------------ meshes, configs


@pytest.mark.parametrize("mesh", [
    meshes.box((0, 0, 0), (1, 2, 3)), meshes.cylinder(0.5, 0.0, 2.0, 10), meshes.sphere(1.0, 6, 10),
])
def test_primitives_are_closed_surfaces(mesh):
    edges = np.sort(mesh.triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, uses = np.unique(edges, axis=0, return_counts=True)
    assert np.all(uses == 2)  # every edge shared by exactly two triangles: no holes for rays to slip through
    # consistent outward winding: the signed volume is positive
    v = mesh.vertices[mesh.triangles]
    volume = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6
    assert volume > 0


def test_scene_ray_hits_a_box_at_the_right_distance():
    builder = meshes.SceneBuilder()
    builder.new_instance()
    builder.add(meshes.box((4, -1, -1), (5, 1, 1)), 3, 0.5)
    hits = LabelledScene(builder.build()).cast(np.zeros((2, 3)), np.array([[1.0, 0, 0], [0.6, 0.8, 0]]))
    assert hits.distance[0] == pytest.approx(4.0, abs=1e-5) and hits.label[0] == 3
    assert hits.cos_incidence[0] == pytest.approx(1.0, abs=1e-5) and hits.reflectivity[0] == pytest.approx(0.5)
    assert not hits.hit[1]


def test_shipped_yaml_configs_load_and_unknown_keys_are_rejected(repo_root):
    for scene in ("outdoor", "indoor"):
        cfg = load_yaml(SimConfig, repo_root / "config" / f"sim_{scene}.yaml")
        assert cfg.scene == scene and cfg.lidar == default_lidar(scene)
    with pytest.raises(ConfigError, match="beam"):
        from_dict(SimConfig, {"lidar": {"beam": 32}})
    with pytest.raises(ValueError, match="beams"):
        SpinningLidar(beams=0)


# ------------------------------------------------------------------------------ CLI


def test_cli_help_exits_cleanly(capsys):
    from ssl3d_ros.sim.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--npy-dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--scans", "2"])  # neither --out nor --npy-dir
    assert exc.value.code == 2


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_cli_writes_a_bag_that_reads_back(tmp_path: Path, storage):
    from ssl3d_ros.io.rosbag import BagSource
    from ssl3d_ros.sim.cli import main

    bag = tmp_path / "bag"
    npy = tmp_path / "npy"
    args = ["--scene", "indoor", "--scans", "3", "--seed", "5", "--beams", "16", "--columns", "256",
            "--out", str(bag), "--storage", storage, "--topic", "/sim/points", "--npy-dir", str(npy), "--quiet"]
    assert main(args) == 0
    expected = list(simulate_sequence(with_lidar(SimConfig(scene="indoor"), beams=16, columns=256), 3, seed=5))
    with BagSource(bag, label_field="label") as source:
        assert len(source) == 3 and source.topics == ["/sim/points"]
        for k, want in enumerate(expected):
            got = source[k]
            assert len(got) == len(want)
            assert got.stamp_ns == want.stamp_ns and got.frame_id == "lidar"
            assert np.array_equal(got.labels, want.labels)
            assert np.allclose(got.points, want.points)
            assert np.array_equal(got.fields["ring"], want.fields["ring"])
    meta = json.loads((npy / "meta.json").read_text())
    assert meta["class_names"] == list(INDOOR_CLASSES) and meta["point_counts"] == [len(s) for s in expected]
    points = np.load(npy / "000002.points.npy")
    assert points.shape == (len(expected[2]), 4)
    assert np.array_equal(np.load(npy / "000002.labels.npy"), expected[2].labels)


def test_cli_writes_organized_depth_clouds(tmp_path: Path):
    from ssl3d_ros.io.rosbag import BagSource
    from ssl3d_ros.sim.cli import main

    bag = tmp_path / "bag"
    assert main(["--scene", "indoor", "--scans", "2", "--beams", "16", "--columns", "128", "--out", str(bag),
                 "--depth-topic", "/depth/points", "--quiet"]) == 0
    frame = next(simulate_depth_sequence(SimConfig(scene="indoor"), 1, seed=0))
    with BagSource(bag, topics=["/depth/points"], label_field="label") as source:
        assert len(source) == 2
        msg = source.message(0)
        assert (msg.height, msg.width) == (frame.height, frame.width) and not msg.is_dense
        scan = source[0]  # NaN pixels are skipped on reading
        assert len(scan) == frame.valid.sum()
        assert np.array_equal(scan.labels, frame.labels[frame.valid])
        assert scan.frame_id == frame.frame_id and scan.stamp_ns == frame.stamp_ns


def test_porous_surfaces_return_from_inside_and_solid_ones_from_the_surface():
    from ssl3d_ros.sim.paths import StreetPath
    from ssl3d_ros.sim.scenes import stream
    from ssl3d_ros.sim.sensors import lidar_scan

    builder = meshes.SceneBuilder()
    builder.add(meshes.box((5, -20, -5), (9, 20, 20)), 1, 0.5, penetration=0.5)  # "hedge" ahead (+x)
    builder.add(meshes.box((-9, -20, -5), (-5, 20, 20)), 2, 0.5)  # solid wall behind
    lidar = SpinningLidar(beams=8, columns=256, fov_lower_deg=-10, fov_upper_deg=10, range_noise_sigma=0.0,
                          mount_height=0.0, dropout_prob=0.0)
    scan = lidar_scan(LabelledScene(builder.build()), StreetPath(0.0, 0.0, speed=0.0), 0.0, lidar,
                      stream(0, 9), stamp_ns=0)
    hedge, wall = scan.points[scan.labels == 1], scan.points[scan.labels == 2]
    assert len(hedge) > 100 and len(wall) > 100
    assert np.allclose(wall[:, 0], -5.0, atol=1e-3)
    depth = hedge[:, 0] - 5.0
    assert depth.min() >= -1e-3 and 0.35 < depth.mean() < 0.65
