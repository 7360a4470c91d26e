"""The node with a mounted depth camera over real DDS: a 480x640 optical-frame cloud gives what the same
cloud in z-up gives, the grid and the obstacles are in base_link with the input's stamp, the grid is
latched for a late nav2 StaticLayer, and the mount's parameters are checked at start-up.

Run inside the private network namespace: ``scripts/netns-run .venv/bin/python -m pytest test/test_node_mounting.py``.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")

from nav_msgs.msg import OccupancyGrid  # noqa: E402
from rclpy.event_handler import SubscriptionEventCallbacks  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from ssl3d_ros.codec import decode_cloud, encode_cloud, fill_cloud_message, xyz  # noqa: E402
from ssl3d_ros.labels import NO_CLASS  # noqa: E402

from builders import (  # noqa: E402
    DEPTH_FRAME, DEPTH_MOUNT, NODE_TEST_PARAMS, OUT, STAMPED, StartedTogether, depth_camera_clouds, node_command, ros_env,
    sim_scan,
)

pytestmark = pytest.mark.ros

# nav2's StaticLayer subscribes its map like this (map_subscribe_transient_local: true, the default).
STATIC_LAYER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
MOUNTED_PARAMS = {**NODE_TEST_PARAMS, "embeddings": {"per_voxel": True}, "frame": DEPTH_MOUNT}


@pytest.fixture(scope="module")
def checkpoint():
    """The packaged model (the simulator's street classes): the node's default checkpoint."""
    from ssl3d_ros.checkpoint import packaged_checkpoint

    return packaged_checkpoint()


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    from ssl3d_ros.evaluation.node_harness import write_params

    return write_params(tmp_path_factory.mktemp("mounted_params") / "perception.yaml", MOUNTED_PARAMS)


@pytest.fixture(scope="module")
def zup_offline(checkpoint, params_file):
    """The same model and parameters without a mount, in this process: what the z-up cloud gives."""
    from ssl3d_ros.perception import PerceptionPipeline, load_node_config, node_config_from_params

    cfg = load_node_config(params_file)
    assert cfg.frame.base_frame == "base_link"
    plain = node_config_from_params({**{k: v for k, v in MOUNTED_PARAMS.items() if k != "frame"}})
    return PerceptionPipeline.from_checkpoint(checkpoint, device="cpu", overrides=plain), cfg


def _cloud(points: np.ndarray, frame_id: str, height: int = 1) -> PointCloud2:
    msg = fill_cloud_message(PointCloud2(), encode_cloud(points, {}, height=height), PointField)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    return msg


def _key(header) -> tuple[int, int]:
    return (header.stamp.sec, header.stamp.nanosec)


def test_an_optical_frame_depth_cloud_gives_what_the_z_up_cloud_gives(harness, node_process, zup_offline):
    from ssl3d_ros.perception import OutputEncoder, occupancy_grid

    offline, cfg = zup_offline
    optical, zup, _ = depth_camera_clouds()
    msg = _cloud(optical, DEPTH_FRAME, height=480)
    harness.reliable.publish(msg)
    outputs = harness.messages_for(msg.header, timeout=120.0)
    seg, emb, vis, occ, obst = (outputs[OUT + t] for t in ("segmentation", "embeddings", "visualization", "occupancy",
                                                           "obstacles"))
    assert STAMPED[-1] == OUT + "obstacles"
    for out in (seg, emb, vis, occ, obst):  # the input's stamp on every output
        assert _key(out.header) == _key(msg.header)
    for out in (seg, emb, vis):  # per-point outputs: the input's frame
        assert out.header.frame_id == DEPTH_FRAME
    for out in (occ, obst):  # what a planner reads: the base frame
        assert out.header.frame_id == "base_link"

    # Per point: the input's organisation, order and coordinates; the classes of the z-up cloud.
    decoded = decode_cloud(seg)
    assert (seg.height, seg.width) == (480, 640)
    np.testing.assert_array_equal(xyz(decoded), optical)
    class_id = decoded.field_values("class_id")
    expected = offline.process_cloud(_cloud(zup, "base_link", height=480)).result
    assert expected.valid.sum() > 100_000
    np.testing.assert_array_equal(class_id != NO_CLASS, expected.valid)
    # floating point may differ in the last bits between processes, which can flip an exact tie
    assert np.mean(class_id == expected.class_id) >= 0.999
    assert set(map(tuple, xyz(decode_cloud(emb)))) <= set(map(tuple, optical[expected.valid]))  # per voxel, input xyz

    # The grid and the obstacles: those of the z-up cloud with the node's classes, in base_link.
    encoder = OutputEncoder.for_classes(offline.class_names, offline.class_colors, cfg)
    valid = class_id != NO_CLASS
    grid = occupancy_grid(zup, class_id, valid, encoder.obstacle, cfg.occupancy, (0.0, 0.0))
    assert (occ.info.width, occ.info.height) == (grid.width, grid.height)
    np.testing.assert_array_equal(np.asarray(occ.data, np.int8), grid.data.ravel())
    assert (grid.data == 100).sum() > 20 and (grid.data == 0).sum() > 50
    points = xyz(decode_cloud(obst))
    assert [f.name for f in obst.fields] == ["x", "y", "z"] and obst.height == 1
    np.testing.assert_array_equal(points, zup[valid & encoder.obstacle[class_id]])
    assert len(points) > 10_000
    road = offline.class_names.index("road")
    assert (class_id == road).sum() > 10_000 and not encoder.obstacle[road]  # the road is in none of them


def test_the_grid_is_latched_for_a_static_layer_that_subscribes_late(harness, node_process):
    """nav2's StaticLayer (transient local, reliable) created after the grid was published still gets
    it, with no incompatible-QoS event, and without a new scan."""
    scan = sim_scan(seed=4)
    msg = _cloud(scan.points, "lidar")  # any frame: the parameters' mount applies
    harness.reliable.publish(msg)
    harness.messages_for(msg.header, topics=[OUT + "occupancy"])
    topic = OUT + "occupancy"
    info = harness.node.get_publishers_info_by_topic(topic)
    assert [i.qos_profile.durability for i in info] == [DurabilityPolicy.TRANSIENT_LOCAL]
    assert info[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE

    received, incompatible = [], []
    arrived = threading.Event()

    def on_grid(grid: OccupancyGrid) -> None:
        received.append(grid)
        arrived.set()

    events = SubscriptionEventCallbacks(incompatible_qos=lambda event: incompatible.append(event))
    with harness.cond:  # the harness's executor thread runs the new subscription's callbacks
        newest = max(a.stamp_ns for a in harness.arrivals[topic])
        late = harness.node.create_subscription(OccupancyGrid, topic, on_grid, STATIC_LAYER_QOS, event_callbacks=events)
    try:
        assert arrived.wait(30.0), "the late transient-local subscriber got no grid"
        grid = received[0]
        assert grid.header.stamp.sec * 1_000_000_000 + grid.header.stamp.nanosec == newest
        assert _key(grid.header) == _key(msg.header) and grid.header.frame_id == "base_link"
        assert grid.info.width == 80 and len(grid.data) == 80 * 80
        time.sleep(0.5)  # an incompatible-QoS event would come with the match
        assert incompatible == []
    finally:
        harness.node.destroy_subscription(late)


BAD_MOUNTS = [
    (["-p", "frame.base_frame:=base_link", "-p", "frame.tf_static:=true"], "tf2_msgs"),
    (["-p", "frame.base_frame:=base_link", "-p", "frame.sensor_rpy:=[0.0, 0.0]"], "frame.sensor_rpy"),
    (["-p", "frame.base_frame:=base_link"], "frame.sensor_rpy"),
    (["-p", "frame.sensor_rpy:=[0.0, 0.0, 1.0]"], "frame.base_frame"),
]


def _tf2_msgs_installed() -> bool:
    try:
        import tf2_msgs  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def bad_mount_starts(checkpoint, tmp_path_factory):
    """A node start-up per bad mount, all started together (each imports torch and rclpy); the tf_static
    case only where tf2_msgs is missing, which is what it checks."""
    from ssl3d_ros.evaluation.node_harness import write_params

    params = write_params(tmp_path_factory.mktemp("bad_mount") / "perception.yaml", NODE_TEST_PARAMS)
    cases = [overrides for overrides, named in BAD_MOUNTS if not (named == "tf2_msgs" and _tf2_msgs_installed())]
    starts = StartedTogether({tuple(o): node_command(params, checkpoint, *o) for o in cases}, env=ros_env(), timeout=120)
    yield starts
    starts.close()


@pytest.mark.parametrize(("overrides", "named"), BAD_MOUNTS)
def test_a_bad_mount_stops_the_node_with_one_line(bad_mount_starts, overrides, named):
    if named == "tf2_msgs" and _tf2_msgs_installed():
        pytest.skip("tf2_msgs is installed here: /tf_static is available")
    result = bad_mount_starts.result(tuple(overrides))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.stderr, result.stderr
