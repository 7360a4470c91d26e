"""The perception node over real DDS: the node runs as a subprocess (its console script), this test
process publishes clouds and subscribes to every output through a real rclpy node.

Run inside the private network namespace: ``scripts/netns-run .venv/bin/python -m pytest test/test_node.py``.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from ssl3d_ros.codec import FLOAT32, UINT8, decode_cloud, encode_cloud, fill_cloud_message, unpack_rgb, xyz  # noqa: E402
from ssl3d_ros.labels import NO_CLASS  # noqa: E402
from ssl3d_ros.perception import (  # noqa: E402
    LatestFrameSlot, OutputEncoder, OutputStage, PerceptionPipeline, load_node_config, occupancy_grid, usable_cores,
)

from builders import DEBUG, OUT, PARAMS, StartedTogether, node_command, ros_env, sim_scan  # noqa: E402

pytestmark = pytest.mark.ros

# The harness, the node process, its checkpoint and parameters and the offline pipeline are fixtures
# of conftest.py (module scope; the harness is ssl3d_ros.evaluation.node_harness.Harness).


def _stamp_key(header) -> tuple[int, int]:
    return (header.stamp.sec, header.stamp.nanosec)


def _cloud(points: np.ndarray, fields: dict, frame_id: str, stamp_ns: int, height: int = 1) -> PointCloud2:
    msg = fill_cloud_message(PointCloud2(), encode_cloud(points, fields, height=height), PointField)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def _now_ns() -> int:
    return time.time_ns()


def _sim_cloud(seed: int, index: int = 0, stamp_ns: int | None = None, height: int = 1) -> PointCloud2:
    """A simulated scan with a NaN point and a far point (both must come back invalid, in place);
    ``height`` > 1 makes it organized, padded with NaN points like a driver's missing returns."""
    scan = sim_scan(seed=seed, index=index)
    points = scan.points.copy()
    points[7] = np.nan
    points[11] = (5000.0, 0.0, 0.0)
    fields = {"intensity": scan.fields["intensity"], "ring": scan.fields["ring"]}
    pad = -len(points) % height
    if pad:
        points = np.concatenate([points, np.full((pad, 3), np.nan, np.float32)])
        fields = {k: np.concatenate([v, np.zeros(pad, v.dtype)]) for k, v in fields.items()}
    return _cloud(points, fields, scan.frame_id, stamp_ns or _now_ns(), height=height)


def _fields(msg: PointCloud2) -> list[tuple[str, int, int, int]]:
    return [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]


# ------------------------------------------------------------------------------------------ tests


def test_latest_frame_slot_replaces_a_waiting_frame():
    slot = LatestFrameSlot()
    assert slot.put("a") is False
    assert slot.put("b") is True  # "a" was still waiting: dropped
    assert slot.take(timeout=0) == "b"
    assert slot.take(timeout=0.01) is None
    taker = threading.Thread(target=lambda: results.append(slot.take(timeout=5)))
    results: list = []
    taker.start()
    time.sleep(0.05)
    slot.put("c")
    taker.join(2)
    assert results == ["c"]
    slot.close()
    assert slot.take(timeout=5) is None  # closed: returns at once


def test_output_stage_publishes_one_frame_while_the_next_is_computed_and_never_drops_one():
    """Double buffering under test control: a second frame is taken while the first is published, a
    third waits until the first is done; a failing frame is reported and the thread goes on; stop
    publishes what was handed over."""
    release = {name: threading.Event() for name in "abcd"}
    published, failed = [], []

    def publish(item):
        release[item].wait(10)
        if item == "b":
            raise RuntimeError("encode failed")
        published.append(item)

    stage = OutputStage(publish, lambda item, exc: failed.append((item, str(exc))))
    assert stage.submit("a")  # taken at once: nothing in flight
    third_done = threading.Event()
    second = threading.Thread(target=lambda: (stage.submit("b"), stage.submit("c"), third_done.set()))
    second.start()
    assert not third_done.wait(0.2)  # "b" waits for "a", "c" for "b": the submitter is held back
    release["a"].set()
    release["b"].set()
    assert third_done.wait(10)
    release["c"].set()
    assert stage.wait_idle(10)
    assert published == ["a", "c"] and failed == [("b", "encode failed")] and stage.is_alive()
    assert stage.submit("d")
    release["d"].set()
    stage.stop()
    assert published == ["a", "c", "d"] and not stage.is_alive()
    assert stage.submit("e") is False  # stopped: not taken


def test_diagnostics_before_the_first_scan(harness, node_process):
    first = harness.diagnostics[0]
    assert "waiting for first scan" in first.message
    values = {kv.key: kv.value for kv in first.values}
    assert values["device"] == "cpu"
    assert values["frames_received"] == "0"
    assert float(values["memory_rss_mb"]) > 0
    # cpu_threads 0 (the default): adaptive, starting at one thread per usable core
    assert values["cpu_threads_mode"] == "adaptive" and values["cpu_threads_in_use"] == str(usable_cores())
    assert {"input_rate_hz", "processing_time_ms_median", "budget_ms", "frames_dropped", "frames_rejected"} <= set(values)


def _check_against_offline(outputs: dict, msg: PointCloud2, offline: PerceptionPipeline) -> None:
    n = msg.height * msg.width
    expected = offline.process_cloud(msg)
    res = expected.result
    seg, emb, vis, occ, obst = (outputs[OUT + t] for t in ("segmentation", "embeddings", "visualization", "occupancy",
                                                           "obstacles"))
    for out in (seg, emb, vis, occ, obst):  # the input header, never restamped (no base frame: the input's frame)
        assert out.header.frame_id == msg.header.frame_id
        assert _stamp_key(out.header) == _stamp_key(msg.header)

    # Segmentation: Autoware's 24-byte layout, same organisation and point order as the input.
    assert _fields(seg) == [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1),
                            ("class_id", 12, UINT8, 1), ("probability", 16, FLOAT32, 1), ("entropy", 20, FLOAT32, 1)]
    assert seg.point_step == 24 and (seg.height, seg.width) == (msg.height, msg.width)
    decoded = decode_cloud(seg)
    input_xyz = xyz(decode_cloud(msg))
    np.testing.assert_array_equal(xyz(decoded), input_xyz)  # NaN where the input has NaN
    class_id = decoded.field_values("class_id")
    probability = decoded.field_values("probability")
    assert (class_id[~res.valid] == NO_CLASS).all()
    assert (class_id[np.isnan(input_xyz).any(axis=1)] == NO_CLASS).all()
    # Equal to offline inference of the same checkpoint (floating point may differ in the last bits
    # between processes, which can flip an exact tie: allow one point in a thousand).
    assert np.mean(class_id == res.class_id) >= 0.999
    np.testing.assert_allclose(probability, res.probability, atol=1e-4)
    np.testing.assert_allclose(decoded.field_values("entropy"), res.entropy, atol=1e-4)

    d = offline.embedding_channels
    assert _fields(emb) == [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("embedding", 12, FLOAT32, d)]
    emb_decoded = decode_cloud(emb)
    assert len(emb_decoded) == n
    np.testing.assert_allclose(emb_decoded.field_values("embedding"), res.embedding, atol=1e-4)

    assert _fields(vis) == [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("rgb", 12, FLOAT32, 1)]
    rgb = unpack_rgb(decode_cloud(vis).field_values("rgb"))
    cfg = load_node_config_cached()
    outputs = OutputEncoder.for_classes(offline.class_names, offline.class_colors, cfg)
    np.testing.assert_array_equal(rgb, outputs.color_table[class_id])

    grid = occupancy_grid(input_xyz, class_id, class_id != NO_CLASS, outputs.obstacle, cfg.occupancy)
    assert (occ.info.width, occ.info.height, occ.info.resolution) == (grid.width, grid.height, 1.0)
    assert (occ.info.origin.position.x, occ.info.origin.position.y) == (-40.0, -40.0)
    np.testing.assert_array_equal(np.asarray(occ.data, np.int8), grid.data.ravel())
    assert (np.asarray(occ.data) == 100).any()

    # Obstacles: x, y, z of the valid obstacle-class points, in the input's order (nav2's observation source).
    assert _fields(obst) == [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1)] and obst.height == 1
    np.testing.assert_array_equal(xyz(decode_cloud(obst)), input_xyz[(class_id != NO_CLASS) & outputs.obstacle[class_id]])


_PARAMS_CACHE: dict = {}


def load_node_config_cached():
    if "cfg" not in _PARAMS_CACHE:
        from ssl3d_ros.perception import node_config_from_params
        import yaml

        _PARAMS_CACHE["cfg"] = node_config_from_params(yaml.safe_load(PARAMS)["/**"]["ros__parameters"])
    return _PARAMS_CACHE["cfg"]


def test_organized_simulated_scan_from_a_best_effort_publisher(harness, node_process, offline):
    msg = _sim_cloud(seed=3, height=16)
    assert msg.height == 16 and np.isnan(xyz(decode_cloud(msg))).any()
    harness.best_effort.publish(msg)
    outputs = harness.messages_for(msg.header)
    _check_against_offline(outputs, msg, offline)
    # Timing topics for this frame.
    timing = harness.wait(lambda: harness.received(DEBUG + "processing_time_ms"), 10, "processing time")[-1]
    pre, inference, post, total = timing.data
    assert timing.layout.dim[0].label == "pre,inference,post,total"
    assert min(pre, inference, post) >= 0 and total >= inference
    latency = harness.wait(lambda: harness.received(DEBUG + "pipeline_latency_ms"), 10, "latency")[-1]
    assert latency.data > 0


def test_real_ouster_scan_from_a_reliable_publisher(harness, node_process, offline, shared_data):
    from ssl3d_ros.io.rosbag import BagSource

    bag = BagSource(shared_data / "bags" / "ouster_real_pointcloud2_mcap", topics=["/ouster/os_1_32_g_v2_1_1_1024x10/points"])
    msg = deserialize_message(bag.raw_message(0), PointCloud2)  # the recorded bytes, as a driver sends them
    assert msg.point_step == 22  # packed x y z intensity ring range: not the layout the node writes
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(_now_ns(), 1_000_000_000)
    harness.reliable.publish(msg)
    outputs = harness.messages_for(msg.header)
    _check_against_offline(outputs, msg, offline)


def test_malformed_clouds_are_rejected_counted_and_the_node_goes_on(harness, node_process, offline):
    before = harness.latest_diagnostics(lambda v: True, 10, "diagnostics")
    rejected_before = int(before["frames_rejected"])
    good = _sim_cloud(seed=5)
    truncated = _sim_cloud(seed=5)
    truncated.data = truncated.data[: len(truncated.data) // 2]
    no_z = _cloud(np.zeros((10, 3), np.float32), {}, "lidar", _now_ns())
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    wrong_step = _sim_cloud(seed=5)
    wrong_step.point_step = 4  # fields end past the point step
    for bad in (truncated, no_z, wrong_step):
        harness.reliable.publish(bad)
        time.sleep(0.3)  # one at a time, so the latest-frame slot keeps each of them
    good.header.stamp.sec, good.header.stamp.nanosec = divmod(_now_ns(), 1_000_000_000)
    harness.reliable.publish(good)
    outputs = harness.messages_for(good.header)
    _check_against_offline(outputs, good, offline)
    harness.latest_diagnostics(
        lambda v: int(v["frames_rejected"]) >= rejected_before + 3, 10, "three more rejected clouds")
    last_error = harness.latest_diagnostics(lambda v: "rejected" in v["last_error"], 10, "last_error")["last_error"]
    assert "malformed" in last_error
    assert any(s.level == DiagnosticStatus.WARN and "malformed" in s.message for s in harness.diagnostics)
    assert node_process[0].poll() is None


def test_burst_keeps_the_latest_scan_and_counts_every_frame(harness, node_process, offline):
    msgs = [_sim_cloud(seed=7, index=0, stamp_ns=_now_ns() + k) for k in range(6)]
    for msg in msgs:
        harness.reliable.publish(msg)
    outputs = harness.messages_for(msgs[-1].header)  # the newest scan is never the one dropped
    assert outputs[OUT + "segmentation"].width == msgs[-1].width

    def settled(values):
        counts = {k: int(values[f"frames_{k}"]) for k in
                  ("received", "processed", "dropped", "rejected", "errors", "skipped_no_subscribers")}
        handled = counts["processed"] + counts["dropped"] + counts["rejected"] + counts["errors"] + counts["skipped_no_subscribers"]
        return counts["received"] == handled and counts["received"] >= 1
    values = harness.latest_diagnostics(settled, 20, "every received frame accounted for")
    assert int(values["frames_errors"]) == 0
    assert float(values["input_rate_hz"]) >= 0


INVALID_PARAMETERS = [("input.qos.depth:=0", "input.qos.depth"), ("voxel_size:=0.1", "unknown parameter"),
                      ("cpu_threads:=-1", "cpu_threads")]


@pytest.fixture(scope="module")
def invalid_parameter_starts(checkpoint, params_file):
    """A node start-up per invalid parameter, all started together (each imports torch and rclpy)."""
    starts = StartedTogether({override: node_command(params_file, checkpoint, "-p", override)
                              for override, _ in INVALID_PARAMETERS}, env=ros_env(), timeout=120)
    yield starts
    starts.close()


@pytest.mark.parametrize(("override", "named"), INVALID_PARAMETERS)
def test_invalid_parameters_stop_the_node_at_start_up(invalid_parameter_starts, override, named):
    result = invalid_parameter_starts.result(override)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr


def test_no_work_without_subscribers(checkpoint, params_file, tmp_path):
    """Once its outputs lose their last subscriber, the node skips frames without computing them.

    A node and a harness of this test's own (another node name and input topic): destroying the
    module harness's subscriptions instead would leave the module's other tests without outputs, so
    this test could only run last. The name must not start with the module node's "ssl3d_perception":
    a harness keeps every status whose name starts with its node's name."""
    from ssl3d_ros.evaluation.node_harness import OUTPUTS, Harness, NodeProcess

    ros_env()
    name, topic = "unsubscribed_perception", "/ssl3d_test/unsubscribed_points"
    harness = Harness(topic, node_name=name, name="ssl3d_test_unsubscribing")  # before the node: its first status
    try:
        node = NodeProcess(tmp_path, None, topic, node_name=name, params_files=[params_file],
                           extra_args=["-p", f"checkpoint:={checkpoint}"], private_domain=True)
        try:
            harness.wait_for_node(node, 120.0)
            before = harness.latest_diagnostics(lambda v: True, 10, "diagnostics")
            skipped_before, processed_before = int(before["frames_skipped_no_subscribers"]), int(before["frames_processed"])
            for sub in harness.subscriptions[:len(OUTPUTS)]:  # every output (they come first)
                harness.node.destroy_subscription(sub)
            time.sleep(1.0)  # let the node's publishers see the subscriptions go
            msg = _sim_cloud(seed=9)
            harness.reliable.publish(msg)
            values = harness.latest_diagnostics(
                lambda v: int(v["frames_skipped_no_subscribers"]) > skipped_before, 20,
                "a frame skipped for lack of subscribers")
            assert int(values["frames_processed"]) == processed_before
        finally:
            node.stop()
    finally:
        harness.close()
