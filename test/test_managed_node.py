"""The managed (lifecycle) node over real DDS: configure loads the model without subscribing, activate
subscribes and segments, deactivate stops listening, a bad configuration fails its transition."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (the ros extra)")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from ssl3d_ros.codec import decode_cloud, encode_cloud, fill_cloud_message  # noqa: E402
from ssl3d_ros.node import ManagedPerceptionNode  # noqa: E402
from ssl3d_ros.perception import PerceptionPipeline  # noqa: E402

from builders import make_checkpoint, sim_scan  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(os.environ.get("SSL3D_IN_NETNS") != "1",
                       reason="starts ROS 2 participants: run through scripts/netns-run"),
]
HANG_GUARD_S = 120.0  # only stops a hung test; nothing here is timed
INPUT = "/ssl3d_perception/input/points"
SEG = "/ssl3d_perception/output/segmentation"


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def ros(tmp_path):
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = MultiThreadedExecutor(context=context)
    listener = rclpy.create_node("managed_test", context=context)
    received: list[PointCloud2] = []
    listener.create_subscription(PointCloud2, SEG, received.append, 10)
    publisher = listener.create_publisher(PointCloud2, INPUT, 10)
    executor.add_node(listener)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield context, executor, listener, publisher, received
    executor.shutdown()
    rclpy.try_shutdown(context=context)


def _scan_message(stamp_sec: int) -> PointCloud2:
    scan = sim_scan(seed=5, beams=16, columns=256)
    msg = fill_cloud_message(PointCloud2(), encode_cloud(scan.points, {"intensity": scan.fields["intensity"]}),
                             PointField)
    msg.header.frame_id, msg.header.stamp.sec = "lidar", stamp_sec
    return msg


def test_configure_loads_activate_subscribes_deactivate_stops(ros, tmp_path):
    context, executor, listener, publisher, received = ros
    checkpoint = make_checkpoint(tmp_path / "model.safetensors")
    node = ManagedPerceptionNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("device", value="cpu")])
    executor.add_node(node)
    try:
        assert not hasattr(node, "pipeline")  # unconfigured: nothing loaded yet
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.pipeline.frames == 0 and node.subscription is None  # loaded and warmed, not listening
        assert listener.count_subscribers(INPUT) == 0
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        _wait(lambda: publisher.get_subscription_count() == 1, "the node's input subscription")
        _wait(lambda: node.publishers_by_output["segmentation"].get_subscription_count() == 1, "output matching")
        msg = _scan_message(200)
        publisher.publish(msg)
        _wait(lambda: any(m.header.stamp.sec == 200 for m in received), "segmentation of the scan")
        out = next(m for m in received if m.header.stamp.sec == 200)
        expected = PerceptionPipeline.from_checkpoint(checkpoint, device="cpu").process_cloud(msg).result.class_id
        assert np.mean(np.asarray(decode_cloud(out).field_values("class_id")) == expected) >= 0.999
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        _wait(lambda: publisher.get_subscription_count() == 0, "the subscription to go")
        assert node.stats.processed == 1
    finally:
        executor.remove_node(node)
        node.destroy_node()


def test_a_bad_configuration_fails_the_configure_transition(ros, tmp_path):
    context, executor, *_ = ros
    node = ManagedPerceptionNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(tmp_path / "missing.safetensors")), Parameter("device", value="cpu")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert not hasattr(node, "pipeline") or node.subscription is None
    finally:
        node.destroy_node()
