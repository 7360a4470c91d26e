"""Encoded clouds survive a real rclpy publish/subscribe between two nodes over DDS.

Run inside the private network namespace:
    scripts/netns-run .venv/bin/python -m pytest -q test/test_codec_ros.py
"""
from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from ssl3d_ros.codec import UINT8, decode_cloud, encode_cloud, fill_cloud_message, scan_from_cloud, unpack_rgb, xyz  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture
def ros_context():
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.shutdown(context=context)


def _exchange(context, msg: PointCloud2, timeout_s: float = 240.0) -> PointCloud2:  # a hang guard only (pytest-timeout: 300 s)
    """Publish ``msg`` from one node until another node receives it; return what arrived."""
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    talker = rclpy.create_node("codec_talker", context=context)
    listener = rclpy.create_node("codec_listener", context=context)
    received: list[PointCloud2] = []
    listener.create_subscription(PointCloud2, "codec_test/cloud", received.append, qos)
    publisher = talker.create_publisher(PointCloud2, "codec_test/cloud", qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(talker)
    executor.add_node(listener)
    try:
        deadline = time.monotonic() + timeout_s
        while not received and time.monotonic() < deadline:
            if publisher.get_subscription_count() > 0:
                publisher.publish(msg)
            executor.spin_once(timeout_sec=0.2)
        for _ in range(5):  # let a message already on the wire finish arriving
            if received:
                break
            executor.spin_once(timeout_sec=0.2)
    finally:
        executor.shutdown()
        talker.destroy_node()
        listener.destroy_node()
    assert received, f"no PointCloud2 arrived within {timeout_s} s"
    return received[0]


def test_published_cloud_decodes_to_the_same_arrays(ros_context):
    rng = np.random.default_rng(7)
    n = 2048
    coords = rng.normal(0, 20, size=(n, 3)).astype(np.float32)
    coords[5] = np.nan
    extras = {
        "class_id": rng.integers(0, 20, size=n),
        "probability": rng.random(n).astype(np.float32),
        "entropy": rng.random(n).astype(np.float32),
        "rgb": rng.integers(0, 256, size=(n, 3), dtype=np.uint8),
        "embedding": rng.normal(size=(n, 64)).astype(np.float32),
    }
    encoded = encode_cloud(coords, extras, field_types={"class_id": UINT8}, height=16, align=True)
    msg = fill_cloud_message(PointCloud2(), encoded, PointField)
    msg.header.frame_id = "os_sensor"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 345

    got = _exchange(ros_context, msg)

    assert (got.height, got.width, got.point_step) == (16, n // 16, encoded.point_step)
    assert [(f.name, f.offset, f.datatype, f.count) for f in got.fields] == [
        (f.name, f.offset, f.datatype, f.count) for f in encoded.fields
    ]
    decoded = decode_cloud(got)
    np.testing.assert_array_equal(xyz(decoded), coords)
    np.testing.assert_array_equal(decoded.field_values("embedding"), extras["embedding"])
    np.testing.assert_array_equal(unpack_rgb(decoded.field_values("rgb")), extras["rgb"])
    np.testing.assert_array_equal(decoded.field_values("class_id"), extras["class_id"])
    np.testing.assert_array_equal(decoded.field_values("probability"), extras["probability"])

    scan, index = scan_from_cloud(got, label_field="class_id")
    keep = np.isfinite(coords).all(axis=1)
    np.testing.assert_array_equal(index, np.flatnonzero(keep))
    np.testing.assert_array_equal(scan.points, coords[keep])
    np.testing.assert_array_equal(scan.labels, extras["class_id"][keep])
    np.testing.assert_array_equal(scan.fields["rgb"], extras["rgb"][keep])
    np.testing.assert_array_equal(scan.fields["embedding"], extras["embedding"][keep])
    assert (scan.frame_id, scan.stamp_ns) == ("os_sensor", 12_000_000_345)


# ------------------------------------------------------------------ parity with upstream sensor_msgs_py


def _real_bag_messages(shared_data):
    from rclpy.serialization import deserialize_message

    from ssl3d_ros.io.rosbag import BagSource

    bag = BagSource(shared_data / "bags" / "ouster_real_pointcloud2_mcap")
    assert len(bag) >= 10
    for i in range(len(bag)):
        yield deserialize_message(bytes(bag.raw_message(i)), PointCloud2)  # as rclpy hands them to a node


def _with_nan_returns(msg: PointCloud2, every: int) -> PointCloud2:
    raw = bytearray(msg.data)
    x = np.ndarray((msg.width * msg.height,), "<f4", buffer=raw, offset=msg.fields[0].offset, strides=(msg.point_step,))
    x[::every] = np.nan
    holed = PointCloud2(header=msg.header, height=msg.height, width=msg.width, fields=msg.fields,
                        is_bigendian=msg.is_bigendian, point_step=msg.point_step, row_step=msg.row_step,
                        is_dense=False)
    holed.data = raw
    return holed


def test_decode_and_encode_match_upstream_sensor_msgs_py_on_real_bags(shared_data):
    """Every scan of the real Ouster bag (packed 22-byte points, six fields of three types): the same
    structured points, columns, x/y/z as read_points / read_points_numpy, bit for bit, and re-encoding
    the decoded scan gives create_cloud's bytes."""
    from launch_stack import upstream_point_cloud2

    pc2 = upstream_point_cloud2()
    for msg in _real_bag_messages(shared_data):
        theirs = pc2.read_points(msg)
        decoded = decode_cloud(msg)
        assert decoded.cloud.dtype == theirs.dtype
        assert decoded.cloud.tobytes() == theirs.tobytes()
        for name in theirs.dtype.names:
            assert decoded.field_values(name).tobytes() == np.ascontiguousarray(theirs[name]).tobytes(), name
        upstream_xyz = pc2.read_points_numpy(msg, field_names=["x", "y", "z"])
        assert xyz(decoded).tobytes() == upstream_xyz.tobytes()
        # skip_nans on the scan with every 7th return dropped (NaN x), as a driver marks missing returns;
        # upstream drops NaN only, ours any non-finite coordinate (the scans hold no ±Inf)
        holed = _with_nan_returns(msg, every=7)
        kept = pc2.read_points_numpy(holed, field_names=["x", "y", "z"], skip_nans=True)
        assert np.isfinite(kept).all() and len(kept) == len(upstream_xyz) - len(range(0, len(upstream_xyz), 7))
        assert xyz(decode_cloud(holed, skip_nans=True)).tobytes() == kept.tobytes()

        scan, index = scan_from_cloud(msg)
        encoded = encode_cloud(scan.points, scan.fields)
        fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in encoded.fields]
        packed = np.zeros(len(scan), dtype=pc2.dtype_from_fields(fields, encoded.point_step))
        for i, name in enumerate("xyz"):
            packed[name] = scan.points[:, i]
        for name, values in scan.fields.items():
            packed[name] = values
        assert bytes(encoded.data) == bytes(pc2.create_cloud(None, fields, packed).data)


def test_header_stamp_is_read_from_serialized_bytes_as_deserializing_reads_it():
    """The benchmark's stamp-only receiver: the stamp from CDR bytes equals the deserialized one,
    for a cloud and a grid, a negative second included; a truncated buffer is refused."""
    from nav_msgs.msg import OccupancyGrid
    from rclpy.serialization import deserialize_message, serialize_message

    from ssl3d_ros.evaluation.node_harness import cdr_header_stamp_ns, set_stamp, stamp_ns

    cloud = fill_cloud_message(PointCloud2(), encode_cloud(np.ones((5, 3), np.float32)), PointField)
    cloud.header.frame_id = "lidar"
    for msg in (set_stamp(cloud, 1_733_000_000_123_456_789), set_stamp(OccupancyGrid(), 42),
                set_stamp(PointCloud2(), -2 * 1_000_000_000 + 5)):
        data = serialize_message(msg)
        assert cdr_header_stamp_ns(data) == stamp_ns(deserialize_message(data, type(msg)).header) == stamp_ns(msg.header)
    big_endian = b"\x00\x00\x00\x00" + (7).to_bytes(4, "big") + (9).to_bytes(4, "big")
    assert cdr_header_stamp_ns(big_endian) == 7_000_000_009
    with pytest.raises(ValueError, match="11 bytes"):
        cdr_header_stamp_ns(serialize_message(cloud)[:11])
