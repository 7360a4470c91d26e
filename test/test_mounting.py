"""Sensor mounting without DDS: the frame.* parameters, the transform maths, /tf_static chains, the
pipeline in the base frame (a depth camera's optical-frame cloud gives what the same cloud gives in
z-up), the grid's free space along the beams and the obstacle cloud."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ssl3d_ros.codec import FieldSpec, decode_cloud, encode_cloud, fill_cloud_message, xyz
from ssl3d_ros.config import ConfigError
from ssl3d_ros.labels import NO_CLASS
from ssl3d_ros.perception import (
    FREE, OCCUPIED, UNKNOWN, FrameMounting, Mount, NodeConfig, OccupancyConfig, OutputEncoder, OutputSelection,
    PerceptionPipeline, StaticTransforms, TransformUnavailable, encode_outputs, free_along_beams, mount_from_config,
    node_config_from_params, obstacle_points, occupancy_grid, rotation_from_quaternion, rotation_from_rpy,
)
from ssl3d_ros.scan import Scan

from builders import DEPTH_FRAME, DEPTH_MOUNT, DEPTH_MOUNT_ROTATION, depth_camera_clouds

# ------------------------------------------------------------------------------- parameters


def _frame(**frame) -> NodeConfig:
    return node_config_from_params({f"frame.{k}": v for k, v in frame.items()})


def test_no_base_frame_is_the_default_and_moves_nothing():
    cfg = NodeConfig()
    assert cfg.frame.base_frame == "" and mount_from_config(cfg.frame) is None
    assert FrameMounting.from_config(cfg.frame).mount_for("anything") is None


@pytest.mark.parametrize(("frame", "named"), [
    ({"base_frame": "base_link"}, "frame.sensor_rpy': give exactly one"),
    ({"base_frame": "base_link", "sensor_rpy": [0.0, 0.0, 0.0], "sensor_quaternion": [0.0, 0.0, 0.0, 1.0]},
     "frame.sensor_quaternion': give exactly one"),
    ({"base_frame": "base_link", "sensor_rpy": [0.0, 0.0]}, "frame.sensor_rpy': needs 3 numbers, got 2"),
    ({"base_frame": "base_link", "sensor_xyz": [0.0, 1.0], "sensor_rpy": [0, 0, 0]}, "frame.sensor_xyz': needs 3"),
    ({"base_frame": "base_link", "sensor_quaternion": [0.0, 0.0, 0.0, 0.0]}, "frame.sensor_quaternion': is all zeros"),
    ({"base_frame": "base_link", "sensor_rpy": [0.0, float("nan"), 0.0]}, "frame.sensor_rpy'.*not finite"),
    ({"sensor_rpy": [0.0, 0.0, 0.0]}, "frame.base_frame': is empty"),
    ({"sensor_xyz": [0.0, 0.0, 1.0]}, "frame.base_frame': is empty"),
    ({"tf_static": True}, "frame.base_frame': is empty"),
    ({"base_frame": "base_link", "tf_static": True, "sensor_rpy": [0, 0, 0]}, "frame.tf_static': is true"),
    ({"base_frame": "base_link", "sensor_rpy": ["a", 0, 0]}, r"frame.sensor_rpy\[0\]: expected a number"),
])
def test_a_bad_mount_is_one_error_naming_the_key(frame, named):
    with pytest.raises(ConfigError, match=named):
        _frame(**frame)


def test_rpy_and_quaternion_give_the_same_mount_and_the_quaternion_is_normalised():
    rng = np.random.default_rng(0)
    for roll, pitch, yaw in rng.uniform(-math.pi, math.pi, (20, 3)):
        cr, sr, cp, sp, cy, sy = (math.cos(roll / 2), math.sin(roll / 2), math.cos(pitch / 2), math.sin(pitch / 2),
                                  math.cos(yaw / 2), math.sin(yaw / 2))
        q = (sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy,
             cr * cp * cy + sr * sp * sy)  # tf2's setRPY
        r = rotation_from_rpy(roll, pitch, yaw)
        np.testing.assert_allclose(rotation_from_quaternion(*(3.0 * np.asarray(q))), r, atol=1e-12)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    # The optical frame of a camera looking along x: exact, as static_transform_publisher writes it.
    optical = mount_from_config(_frame(**DEPTH_MOUNT).frame)
    np.testing.assert_array_equal(optical.rotation, DEPTH_MOUNT_ROTATION)
    quaternion = _frame(base_frame="base_link", sensor_xyz=[0.0, 0.0, 1.5], sensor_quaternion=[-1, 1, -1, 1])
    np.testing.assert_array_equal(mount_from_config(quaternion.frame).rotation, DEPTH_MOUNT_ROTATION)
    np.testing.assert_array_equal(optical.translation, [0.0, 0.0, 1.5])
    # z forward in the optical frame is x forward in base_link, y down is z down
    np.testing.assert_array_equal(optical.points_to_base(np.array([[0, 0, 2], [0, 1, 2]], np.float32)),
                                  [[2, 0, 1.5], [2, 0, 0.5]])


def test_moving_points_keeps_placeholders_invalid_rotates_normals_and_keeps_order():
    mount = Mount(rotation_from_rpy(0.3, -0.2, 1.0), np.array([1.0, -2.0, 0.5]), "base_link")
    points = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [np.nan, 1.0, 1.0], [-4.0, 0.5, 0.25]], np.float32)
    normal = np.array([[0, 0, 1]] * 4, np.float32)
    scan = Scan(points, {"normal": normal, "intensity": np.arange(4, dtype=np.float32)}, frame_id="cam",
                labels=np.arange(4))
    moved = mount.scan_to_base(scan)
    assert moved.frame_id == "base_link" and np.isnan(moved.points[1:3]).all(axis=1).all()
    np.testing.assert_allclose(moved.points[[0, 3]], points[[0, 3]] @ mount.rotation.T + mount.translation, atol=1e-5)
    np.testing.assert_allclose(moved.fields["normal"], normal @ mount.rotation.T, atol=1e-6)
    np.testing.assert_array_equal(moved.fields["intensity"], scan.fields["intensity"])
    np.testing.assert_array_equal(moved.labels, scan.labels)
    back = mount.inverse("cam").points_to_base(moved.points[[0, 3]])
    np.testing.assert_allclose(back, points[[0, 3]], atol=1e-5)


# ------------------------------------------------------------------------------- /tf_static


def _tf(parent: str, child: str, xyz, q) -> SimpleNamespace:
    v = SimpleNamespace
    return v(header=v(frame_id=parent), child_frame_id=child,
             transform=v(translation=v(x=xyz[0], y=xyz[1], z=xyz[2]), rotation=v(x=q[0], y=q[1], z=q[2], w=q[3])))


def test_static_transforms_chain_to_the_base_frame():
    """base_link -> camera_link -> camera_optical_frame (robot_state_publisher's usual tree), a sibling
    lidar, a transform that is not a rotation (left out), and a frame never linked."""
    s = math.sqrt(0.5)
    tree = StaticTransforms()
    taken = tree.add_message(SimpleNamespace(transforms=[
        _tf("base_link", "camera_link", (0.2, 0.0, 1.0), (0.0, 0.0, s, s)),  # yawed 90 degrees
        _tf("camera_link", "camera_optical_frame", (0.0, 0.0, 0.0), (-0.5, 0.5, -0.5, 0.5)),
        _tf("/base_link", "lidar", (0.0, 0.0, 2.0), (0.0, 0.0, 0.0, 1.0)),
        _tf("base_link", "broken", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
    ]))
    assert taken == 3
    camera = tree.lookup("base_link", "camera_optical_frame")
    expected = Mount(rotation_from_rpy(0, 0, math.pi / 2), np.array([0.2, 0.0, 1.0]), "base_link").then(
        Mount(DEPTH_MOUNT_ROTATION, np.zeros(3), "camera_link"))
    np.testing.assert_allclose(camera.rotation, expected.rotation, atol=1e-12)
    np.testing.assert_allclose(camera.translation, [0.2, 0.0, 1.0], atol=1e-12)
    # optical z (forward) is camera_link x, which is base_link y after the 90 degree yaw
    np.testing.assert_allclose(camera.points_to_base(np.array([[0, 0, 1]], np.float32)), [[0.2, 1.0, 1.0]], atol=1e-6)
    lidar_from_camera = tree.lookup("lidar", "camera_optical_frame")  # siblings: through base_link
    np.testing.assert_allclose(lidar_from_camera.translation, [0.2, 0.0, -1.0], atol=1e-12)
    with pytest.raises(TransformUnavailable, match="'base_link' <- 'elsewhere'"):
        tree.lookup("base_link", "elsewhere")
    mounting = FrameMounting("base_link", None, tree)
    assert mounting.mount_for("base_link").base_frame == "base_link"
    np.testing.assert_allclose(mounting.mount_for("camera_optical_frame").rotation, camera.rotation)
    with pytest.raises(TransformUnavailable):
        mounting.mount_for("broken")


# ------------------------------------------------------------------------------- the pipeline in the base frame


def _organized(points: np.ndarray, frame_id: str) -> SimpleNamespace:
    msg = fill_cloud_message(SimpleNamespace(), encode_cloud(points, {}, height=480), lambda **kw: FieldSpec(**kw))
    msg.header = SimpleNamespace(frame_id=frame_id, stamp=SimpleNamespace(sec=1, nanosec=2))
    return msg


@pytest.fixture(scope="module")
def depth_results():
    """The packaged model on a 480x640 depth image: the optical-frame cloud with the camera's mount, the
    same cloud in z-up with no mount, and the optical-frame cloud with no mount (today's behaviour)."""
    optical, zup, labels = depth_camera_clouds()
    mounted_cfg = _frame(**DEPTH_MOUNT)
    mounted = PerceptionPipeline.from_config(mounted_cfg)
    plain = PerceptionPipeline.from_config(NodeConfig())
    return SimpleNamespace(
        optical=optical, zup=zup, labels=labels, cfg=mounted_cfg, classes=mounted.class_names,
        encoder=OutputEncoder.for_classes(mounted.class_names, mounted.class_colors, mounted_cfg),
        mounted=mounted.process_cloud(_organized(optical, DEPTH_FRAME)),
        zup_cloud=plain.process_cloud(_organized(zup, "base_link")),
        unmounted=plain.process_cloud(_organized(optical, DEPTH_FRAME)),
    )


def test_an_optical_frame_depth_cloud_with_its_mount_gives_what_the_z_up_cloud_gives(depth_results):
    r = depth_results
    mounted, zup = r.mounted.result, r.zup_cloud.result
    assert r.mounted.height == 480 and r.mounted.width == 640 and len(r.mounted.xyz) == 480 * 640
    np.testing.assert_array_equal(mounted.valid, zup.valid)
    assert mounted.valid.sum() > 100_000
    np.testing.assert_array_equal(mounted.class_id, zup.class_id)  # the same class for every point
    np.testing.assert_array_equal(mounted.probability, zup.probability)
    np.testing.assert_array_equal(r.mounted.base_xyz, r.zup_cloud.xyz)  # what the model saw: z up
    assert mounted.base_frame == "base_link" and mounted.sensor_origin.tolist() == [0.0, 0.0, 1.5]
    np.testing.assert_array_equal(r.mounted.xyz, r.optical)  # per-point outputs keep the input's coordinates
    # The same grid and the same obstacles, all in base_link.
    grids = [occupancy_grid(c.base_xyz, c.result.class_id, c.result.valid, r.encoder.obstacle, r.cfg.occupancy,
                            c.result.sensor_origin[:2]) for c in (r.mounted, r.zup_cloud)]
    np.testing.assert_array_equal(grids[0].data, grids[1].data)
    assert (grids[0].data == OCCUPIED).sum() > 20 and (grids[0].data == FREE).sum() > 50
    outputs = [dict((n, p) for n, p, _ in encode_outputs(c, OutputSelection(), r.encoder)) for c in (r.mounted, r.zup_cloud)]
    np.testing.assert_array_equal(outputs[0]["occupancy"].data, grids[0].data)
    assert bytes(outputs[0]["obstacles"].data) == bytes(outputs[1]["obstacles"].data)
    # The per-point segmentation keeps the optical coordinates; the per-voxel embeddings too.
    np.testing.assert_array_equal(xyz(decode_cloud(outputs[0]["segmentation"])), r.optical)
    assert outputs[0]["segmentation"].height == 480
    kept = decode_cloud(outputs[0]["embeddings"])
    assert set(map(tuple, xyz(kept))) <= set(map(tuple, r.optical[mounted.valid]))


def test_without_the_mount_a_depth_camera_is_misread(depth_results):
    """Why the mount exists: the model fed the optical frame (y down, z forward) sees a different scene."""
    r = depth_results
    car = r.classes.index("car")
    zup_cars = int((r.zup_cloud.result.class_id == car).sum())
    truth_cars = int((r.labels == 7).sum())  # the simulator's label 7 is 'car'
    assert zup_cars > 0.5 * truth_cars > 1000
    assert (r.unmounted.result.class_id == car).sum() < 0.2 * zup_cars
    same = r.unmounted.result.class_id[r.zup_cloud.result.valid] == r.zup_cloud.result.class_id[r.zup_cloud.result.valid]
    assert same.mean() < 0.5


def test_obstacles_are_the_obstacle_class_points_in_the_base_frame(depth_results):
    r = depth_results
    res = r.mounted.result
    names = dict((n, p) for n, p, _ in encode_outputs(r.mounted, OutputSelection(), r.encoder))
    cloud = names["obstacles"]
    assert [f.name for f in cloud.fields] == ["x", "y", "z"] and cloud.point_step == 12 and cloud.height == 1
    points = xyz(decode_cloud(cloud))
    expected = r.mounted.base_xyz[res.valid & r.encoder.obstacle[res.class_id]]
    np.testing.assert_array_equal(points, expected)
    assert len(points) > 10_000 and np.isfinite(points).all()
    road = r.classes.index("road")
    assert not r.encoder.obstacle[road] and (res.class_id == road).sum() > 10_000  # the road is not an obstacle
    assert points[:, 2].max() > 0.5  # z up: obstacles stand above the ground (base_link at the road)
    only_cars = OutputEncoder.for_classes(r.classes, np.zeros((0, 3), np.uint8),
                                          node_config_from_params({"occupancy.obstacle_classes": ["car"]}))
    cars = obstacle_points(r.mounted.base_xyz, res.class_id, res.valid, only_cars.obstacle)
    assert len(cars) == int((res.class_id == r.classes.index("car")).sum())


# ------------------------------------------------------------------------------- free space along beams


def _grid_cfg(**kw) -> OccupancyConfig:
    base = dict(resolution=1.0, size_x=10.0, size_y=10.0, origin_x=-5.0, origin_y=-5.0, z_min=-1.0, z_max=2.0)
    return OccupancyConfig(**{**base, **kw})


def test_beams_mark_free_the_cells_between_the_sensor_and_each_hit():
    obstacle = np.zeros(256, bool)
    obstacle[7] = True
    # sensor at the grid's centre (cell 5, 5); a wall point 3 cells ahead along +x, a ground point along -y
    xyz_ = np.array([[3.5, 0.5, 0.0], [0.5, -3.5, 0.0]], np.float32)
    class_id = np.array([7, 1], np.uint8)
    grid = occupancy_grid(xyz_, class_id, np.ones(2, bool), obstacle, _grid_cfg()).data
    assert grid[5, 8] == OCCUPIED
    assert (grid[5, 5:8] == FREE).all()  # the sensor's cell and the two before the wall
    assert grid[5, 9] == UNKNOWN  # behind the wall
    assert (grid[1:6, 5] == FREE).all()  # the ground hit at (5, 1) and the cells towards it
    assert grid[0, 5] == UNKNOWN
    assert (grid == FREE).sum() == 3 + 4 and (grid == OCCUPIED).sum() == 1
    without = occupancy_grid(xyz_, class_id, np.ones(2, bool), obstacle, _grid_cfg(ray_cast=False)).data
    assert (without == FREE).sum() == 1 and (without == OCCUPIED).sum() == 1


def test_beams_never_clear_an_obstacle_and_clip_to_the_grid():
    obstacle = np.zeros(256, bool)
    obstacle[7] = True
    # an obstacle 2 cells ahead and a ground hit behind it on the same line; a diagonal hit far outside
    # the grid; a point above the height band (ignored, clears nothing); an invalid point
    xyz_ = np.array([[2.5, 0.5, 0.0], [4.5, 0.5, 0.0], [40.5, 40.5, 0.0], [-3.5, 0.5, 5.0], [-2.5, 0.5, 0.0]],
                    np.float32)
    class_id = np.array([7, 1, 1, 7, NO_CLASS], np.uint8)
    valid = np.array([True, True, True, True, False])
    grid = occupancy_grid(xyz_, class_id, valid, obstacle, _grid_cfg()).data
    assert grid[5, 7] == OCCUPIED and (grid[5, 5:7] == FREE).all() and (grid[5, 8:10] == FREE).all()
    assert all(grid[k, k] == FREE for k in range(5, 10))  # the beam to (40.5, 40.5) up to the grid's edge
    assert (grid[5, 0:5] == UNKNOWN).all()  # nothing valid in the band to the left
    # a sensor outside the grid: beams clear only inside it
    outside = occupancy_grid(np.array([[4.5, 0.5, 0.0]], np.float32), np.array([1], np.uint8), np.ones(1, bool),
                             obstacle, _grid_cfg(), sensor_xy=(-20.0, 0.5)).data
    assert (outside[5, :] == FREE).all() and (outside == FREE).sum() == 10


def _crossed_exactly(hx: np.ndarray, hy: np.ndarray, sensor: tuple[float, float], width: int, height: int) -> np.ndarray:
    """(height * width,) bool: cells whose half-open square a beam from ``sensor`` towards a hit, stopped
    half a cell short of it, enters (Liang-Barsky, every beam, no binning): the reference."""
    dx, dy = hx - sensor[0], hy - sensor[1]
    length = np.hypot(dx, dy)
    scale = np.maximum(length - 0.5, 0.0) / np.maximum(length, 1e-12)
    dx, dy = (dx * scale)[:, None], (dy * scale)[:, None]
    iy, ix = np.divmod(np.arange(width * height), width)
    t0, t1 = np.zeros((len(hx), width * height)), np.ones((len(hx), width * height))
    for start, d, low in ((sensor[0], dx, ix), (sensor[1], dy, iy)):
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = (low - start) / d, (low + 1 - start) / d
        inside = (low <= start) & (start < low + 1)
        lo = np.where(d == 0, np.where(inside, -np.inf, np.inf), np.minimum(a, b))
        hi = np.where(d == 0, np.where(inside, np.inf, -np.inf), np.maximum(a, b))
        t0, t1 = np.maximum(t0, lo), np.minimum(t1, hi)
    return (t1 > t0).any(axis=0)


@pytest.mark.parametrize("sensor", [(20.0, 20.0), (13.3, 27.8), (-6.0, 15.5)])
def test_free_cells_match_exact_beams_up_to_slivers(sensor):
    """Against every beam traced exactly: no crossed cell is left unknown, and the cells freed beyond the
    exact ones (a bin's bearings touching a cell by a sliver) stay a few per cent."""
    rng = np.random.default_rng(7)
    bearing, distance = rng.uniform(-math.pi, math.pi, 300), rng.uniform(1.0, 30.0, 300)
    hx, hy = 20.0 + distance * np.cos(bearing), 20.0 + distance * np.sin(bearing)  # hits around the grid's centre
    free = free_along_beams(hx, hy, sensor, 40, 40)
    exact = _crossed_exactly(hx, hy, sensor, 40, 40)
    assert exact.sum() > 200
    assert not (exact & ~free).any()
    assert (free & ~exact).sum() <= 0.05 * exact.sum()


def test_the_nav2_example_reads_the_node_s_obstacles_and_latched_grid(repo_root):
    import yaml

    from ssl3d_ros.evaluation.node_harness import NODE_NAME

    doc = yaml.safe_load((repo_root / "config" / "nav2_costmap_example.yaml").read_text())
    costmap = doc["local_costmap"]["local_costmap"]["ros__parameters"]
    layer = costmap["obstacle_layer"]
    assert "obstacle_layer" in costmap["plugins"] and layer["plugin"] == "nav2_costmap_2d::ObstacleLayer"
    source = layer[layer["observation_sources"]]
    assert source["topic"] == f"/{NODE_NAME}/output/obstacles" and source["data_type"] == "PointCloud2"
    assert source["marking"] is True and source["clearing"] is True
    text = (repo_root / "config" / "nav2_costmap_example.yaml").read_text()
    assert f"map_topic: /{NODE_NAME}/output/occupancy" in text and "map_subscribe_transient_local: true" in text
