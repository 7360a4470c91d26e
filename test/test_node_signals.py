"""The node's signals about its input, over DDS (issue 28, part C): questionable headers, a suspect
``is_bigendian`` flag, values that used to print raw Python warnings, the transport's size limit against
``input.max_points``, and sustained overload. Each gets one throttled WARN line and a ``/diagnostics``
counter (or value) from the real node, whose outputs keep the input's header unchanged.

One node process serves the module. It runs with a Fast DDS profile of its own, a 4 MiB shared-memory
segment, so that ``input.max_points`` (auto) comes out at 258,048 points, small enough to test with a
4 MB cloud; this process (the sender) keeps the 64 MiB profile, which is what delivers that cloud (a
best-effort sample travels in its sender's segment). The policies are tested without DDS in
test/test_input_signals.py.

Run inside the private network namespace::

    scripts/netns-run .venv/bin/python -m pytest -q test/test_node_signals.py
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")

from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from ssl3d_ros.codec import FLOAT32, FLOAT64, decode_cloud, encode_cloud, fill_cloud_message  # noqa: E402
from ssl3d_ros.evaluation.node_harness import NodeProcess  # noqa: E402
from ssl3d_ros.labels import NO_CLASS  # noqa: E402
from ssl3d_ros.perception import OVERLOAD_WINDOW_S, SEGMENT_MARGIN, TYPICAL_POINT_STEP, WARN_PERIOD_S  # noqa: E402

from builders import INPUT_TOPIC, OUT, sim_scan  # noqa: E402

HANG_GUARD_S = 120  # waits end as soon as what they wait for happens; this only ends a hung test
SEG = OUT + "segmentation"
NODE_SEGMENT = 4 * 2**20
AUTO_MAX_POINTS = (NODE_SEGMENT - SEGMENT_MARGIN) // TYPICAL_POINT_STEP  # 258,048
BURST = 3  # copies of each questionable cloud: every copy counted, one warning line

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(os.environ.get("SSL3D_IN_NETNS") != "1",
                       reason="starts ROS 2 participants: run through scripts/netns-run"),
]


@pytest.fixture(scope="module")
def node_profile(tmp_path_factory, repo_root) -> Path:
    """config/fastdds_large_data.xml with a 4 MiB segment instead of 64 MiB."""
    text = (repo_root / "config" / "fastdds_large_data.xml").read_text()
    assert text.count("67108864") == 2  # segment_size and maxMessageSize
    path = tmp_path_factory.mktemp("profile") / "fastdds_4mib.xml"
    path.write_text(text.replace("67108864", str(NODE_SEGMENT)))
    return path


@pytest.fixture(scope="module")
def node_process(harness, checkpoint, params_file, node_profile, tmp_path_factory):
    """The node (overrides conftest's) on the 4 MiB profile; yields (its Popen, its log path)."""
    node = NodeProcess(tmp_path_factory.mktemp("signals_node"), None, INPUT_TOPIC, params_files=[params_file],
                       extra_args=["-p", f"checkpoint:={checkpoint}"], private_domain=True,
                       env={"FASTDDS_DEFAULT_PROFILES_FILE": str(node_profile)})
    try:
        harness.wait_for_node(node, HANG_GUARD_S)
        yield node.proc, node.log_path
    finally:
        node.stop()


# ------------------------------------------------------------------------------------ messages

_SCAN = {}


def base_scan():
    if "scan" not in _SCAN:
        _SCAN["scan"] = sim_scan(seed=11, beams=16, columns=256)  # 4k points: quick on a busy 2-core CPU
    return _SCAN["scan"]


def now_stamp() -> tuple[int, int]:
    return divmod(time.time_ns(), 1_000_000_000)


def with_header(msg: PointCloud2, frame_id: str = "lidar", stamp: tuple[int, int] | None = None) -> PointCloud2:
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp if stamp is not None else now_stamp()
    return msg


def valid_cloud(frame_id: str = "lidar", stamp: tuple[int, int] | None = None) -> PointCloud2:
    scan = base_scan()
    msg = fill_cloud_message(PointCloud2(), encode_cloud(scan.points, {"intensity": scan.fields["intensity"]}),
                             PointField)
    return with_header(msg, frame_id, stamp)


def packed_cloud(columns: dict[str, np.ndarray], types: dict[str, str], *, bigendian_flag: bool = False,
                 write_bigendian: bool = False, frame_id: str = "lidar") -> PointCloud2:
    """A cloud of the given field types, its bytes written in one byte order, its flag saying whichever."""
    order = ">" if write_bigendian else "<"
    dtype = np.dtype([(name, np.dtype(types[name]).newbyteorder(order)) for name in columns])
    arr = np.zeros(len(next(iter(columns.values()))), dtype)
    for name, values in columns.items():
        arr[name] = values
    msg = PointCloud2()
    msg.height, msg.width = 1, len(arr)
    msg.fields = [PointField(name=name, offset=dtype.fields[name][1], datatype={"f4": FLOAT32, "f8": FLOAT64}[types[name]],
                             count=1) for name in columns]
    msg.is_bigendian, msg.point_step, msg.row_step = bigendian_flag, dtype.itemsize, dtype.itemsize * len(arr)
    msg.data, msg.is_dense = arr.tobytes(), False
    return with_header(msg, frame_id)


def xyzi() -> dict[str, np.ndarray]:
    scan = base_scan()
    p = scan.points
    return {"x": p[:, 0].copy(), "y": p[:, 1].copy(), "z": p[:, 2].copy(), "intensity": scan.fields["intensity"].copy()}


F4 = {"x": "f4", "y": "f4", "z": "f4", "intensity": "f4"}


# ------------------------------------------------------------------------------------ helpers


def log_since(log_path: Path, offset: int) -> str:
    return log_path.read_bytes()[offset:].decode(errors="replace")


def warn_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if "WARN" in line and needle in line]


def fresh_counts(harness) -> dict[str, str]:
    """Values of a status published after this call (it counts every frame finished before it)."""
    return harness.fresh_diagnostics(HANG_GUARD_S)


def wait_value(harness, key: str, at_least: int, what: str) -> dict[str, str]:
    return harness.latest_diagnostics(lambda v: int(v[key]) >= at_least, HANG_GUARD_S, what)


def throttled_lines(since: float) -> int:
    """The most lines one kind of warning may give since ``since`` (monotonic): one per throttle period.
    One on a machine that is not overloaded; a loaded 2-core one took 5 s a frame here."""
    return 1 + int((time.monotonic() - since) / WARN_PERIOD_S)


def send_and_receive(harness, msg: PointCloud2) -> dict:
    """Publish one cloud and wait for its four outputs (forgetting earlier arrivals first: copies of a
    cloud with a fixed stamp share it)."""
    harness.clear()
    harness.reliable.publish(msg)
    return harness.messages_for(msg.header, timeout=HANG_GUARD_S)


def assert_matches_offline(out: PointCloud2, msg: PointCloud2, offline) -> None:
    expected = offline.process_cloud(msg).result
    class_id = np.asarray(decode_cloud(out).field_values("class_id"))
    np.testing.assert_array_equal(class_id != NO_CLASS, expected.valid)
    assert np.mean(class_id == expected.class_id) >= 0.999


# ------------------------------------------------------------------------------------ headers

# kind -> (frame_id, stamp or None for "now", what the warning names)
HEADER_CASES = {
    "frame_id_empty": ("", None, "empty header.frame_id"),
    "frame_id_too_long": ("f" * 10_000, None, "header.frame_id of 10000 characters"),
    "stamp_zero": ("case_stamp_zero", (0, 0), "header.stamp 0 (sec 0, nanosec 0)"),
    "stamp_in_future": ("case_stamp_in_future", (2**31 - 1, 0), "header.stamp.sec = 2147483647"),
    "stamp_nanosec_out_of_range": ("case_nanosec", (1_765_000_000, 1_500_000_000), "header.stamp.nanosec = 1500000000"),
    "stamp_sec_negative": ("case_negative_sec", (-5, 0), "negative header.stamp.sec = -5"),
}


@pytest.mark.parametrize("kind", list(HEADER_CASES))
def test_a_questionable_header_is_processed_kept_warned_once_and_counted(kind, harness, node_process, offline):
    frame_id, stamp, names = HEADER_CASES[kind]
    proc, log_path = node_process
    counter = f"frames_header_{kind}"
    before = fresh_counts(harness)
    offset, start = log_path.stat().st_size, time.monotonic()
    for _ in range(BURST):
        msg = valid_cloud(frame_id, stamp)
        outputs = send_and_receive(harness, msg)
        for out in outputs.values():  # the input's header, unchanged, on every output
            assert out.header.frame_id == msg.header.frame_id
            assert (out.header.stamp.sec, out.header.stamp.nanosec) == (msg.header.stamp.sec, msg.header.stamp.nanosec)
        assert_matches_offline(outputs[SEG], msg, offline)
    after = wait_value(harness, counter, int(before[counter]) + BURST, f"{counter} to grow by {BURST}")
    assert int(after[counter]) == int(before[counter]) + BURST
    assert int(after["frames_rejected"]) == int(before["frames_rejected"])
    assert int(after["frames_errors"]) == int(before["frames_errors"])
    harness.latest_diagnostics(lambda v: f"{kind} in" in v["_message"], HANG_GUARD_S, "a status naming the problem")
    text = log_since(log_path, offset)
    lines = warn_lines(text, names)
    assert 1 <= len(lines) <= throttled_lines(start), f"{len(lines)} warnings for {BURST} clouds with {kind}:\n{text[-3000:]}"
    assert max(len(line) for line in text.splitlines()) < 1500  # a 10 kB frame_id is cut in the log
    assert proc.poll() is None


# ------------------------------------------------------------------------------------ is_bigendian


def test_little_endian_data_flagged_big_endian_is_processed_as_declared_warned_and_counted(
        harness, node_process, offline):
    proc, log_path = node_process
    before = fresh_counts(harness)
    offset, start = log_path.stat().st_size, time.monotonic()
    for _ in range(BURST):
        msg = packed_cloud(xyzi(), F4, bigendian_flag=True, write_bigendian=False, frame_id="case_wrong_endian")
        outputs = send_and_receive(harness, msg)
        assert_matches_offline(outputs[SEG], msg, offline)
    after = wait_value(harness, "frames_big_endian_mostly_invalid",
                       int(before["frames_big_endian_mostly_invalid"]) + BURST, "the suspect byte order counted")
    assert int(after["frames_big_endian"]) == int(before["frames_big_endian"]) + BURST
    text = log_since(log_path, offset)
    lines = warn_lines(text, "is_bigendian=true")
    assert 1 <= len(lines) <= throttled_lines(start), text[-3000:]
    share = re.search(r"and (\d+) % of its (\d+) points", lines[0])
    assert share and int(share.group(1)) >= 90 and int(share.group(2)) == len(base_scan()), lines[0]


def test_real_big_endian_data_is_counted_without_a_warning(harness, node_process, offline):
    proc, log_path = node_process
    before = fresh_counts(harness)
    offset = log_path.stat().st_size
    msg = packed_cloud(xyzi(), F4, bigendian_flag=True, write_bigendian=True, frame_id="case_right_endian")
    assert_matches_offline(send_and_receive(harness, msg)[SEG], msg, offline)
    after = wait_value(harness, "frames_big_endian", int(before["frames_big_endian"]) + 1, "a big-endian frame")
    assert after["frames_big_endian_mostly_invalid"] == before["frames_big_endian_mostly_invalid"]
    assert not warn_lines(log_since(log_path, offset), "is_bigendian"), log_since(log_path, offset)


# ------------------------------------------------------------------------------------ Python warnings


def hostile_clouds() -> dict[str, PointCloud2]:
    """The issue's clouds that printed raw Python warnings on the node's stderr."""
    huge = dict(xyzi())
    huge["intensity"] = huge["intensity"].astype(np.float64)
    huge["intensity"][::7] = 1e300  # overflow casting to float32
    far = xyzi()
    far["x"][::5], far["y"][1::5], far["z"][2::5], far["x"][3::5] = np.inf, 1e38, -1e38, 3e38  # overflow dividing
    read_only = packed_cloud(xyzi(), F4, frame_id="case_read_only")
    # a sender's read-only buffer (rclpy copies it into the message; the node gets a buffer of its own)
    read_only.data = np.frombuffer(bytes(read_only.data), np.uint8)
    return {
        "intensity_1e300_float64": packed_cloud(huge, dict(F4, intensity="f8"), frame_id="case_intensity_1e300"),
        "inf_and_1e38_points": packed_cloud(far, F4, frame_id="case_inf_1e38"),
        "read_only_buffer": read_only,
    }


def test_values_that_printed_raw_python_warnings_give_outputs_and_no_raw_warning(harness, node_process, offline):
    proc, log_path = node_process
    before = fresh_counts(harness)
    for case, msg in hostile_clouds().items():
        outputs = send_and_receive(harness, msg)
        assert_matches_offline(outputs[SEG], msg, offline)
        expected = offline.process_cloud(msg).result
        assert 0 < expected.num_valid < len(base_scan()), case
        fields = decode_cloud(outputs[SEG])
        invalid = np.asarray(fields.field_values("class_id")) == NO_CLASS
        assert (np.asarray(fields.field_values("probability"))[invalid] == 0).all(), case
        assert (np.asarray(fields.field_values("entropy"))[invalid] == 1).all(), case
        embedding = np.asarray(decode_cloud(outputs[OUT + "embeddings"]).field_values("embedding"))
        assert np.isfinite(embedding).all() and (embedding[invalid] == 0).all(), case
    after = wait_value(harness, "frames_processed", int(before["frames_processed"]) + 3, "the three frames")
    assert int(after["frames_errors"]) == int(before["frames_errors"])
    text = log_path.read_text(errors="replace")  # the whole log, start-up included (stdout and stderr)
    raw = [line for line in text.splitlines() if "Warning:" in line]
    assert not raw, "raw Python warnings in the node's log:\n" + "\n".join(raw)
    assert proc.poll() is None


# ------------------------------------------------------------------------------------ transport limits


def test_input_max_points_agrees_with_the_transport_and_says_so(harness, node_process, node_profile):
    proc, log_path = node_process
    text = log_path.read_text(errors="replace")
    start = [line for line in text.splitlines() if "input transport:" in line]
    assert len(start) == 1, text[-3000:]
    assert f"4 MiB, {node_profile}" in start[0] and f"{AUTO_MAX_POINTS} points at 16 B/point" in start[0]
    assert f"input.max_points = {AUTO_MAX_POINTS} (auto)" in start[0]
    values = fresh_counts(harness)
    assert values["input_max_points"] == str(AUTO_MAX_POINTS)
    assert values["transport_segment_bytes"] == str(NODE_SEGMENT)
    assert values["transport_max_cloud_bytes"] == str(NODE_SEGMENT - SEGMENT_MARGIN)
    assert values["transport_max_cloud_points_16b"] == str(AUTO_MAX_POINTS)

    # One point more than the node's transport carries at 16 B/point: this sender's 64 MiB segment delivers
    # it, and the node refuses it before decoding, as input.max_points says, counted and warned.
    n = AUTO_MAX_POINTS + 1
    rng = np.random.default_rng(3)
    big = fill_cloud_message(PointCloud2(), encode_cloud(rng.uniform(-30, 30, (n, 3)).astype(np.float32),
                                                         {"intensity": rng.uniform(0, 1, n).astype(np.float32)}),
                             PointField)
    assert len(big.data) == n * TYPICAL_POINT_STEP > NODE_SEGMENT - SEGMENT_MARGIN
    offset = log_path.stat().st_size
    harness.reliable.publish(with_header(big, "case_too_big"))
    after = wait_value(harness, "frames_rejected", int(values["frames_rejected"]) + 1, "the large cloud refused")
    assert f"exceeds parameter input.max_points = {AUTO_MAX_POINTS}" in after["last_error"]
    harness.wait(lambda: warn_lines(log_since(log_path, offset), "exceeds parameter input.max_points"), HANG_GUARD_S,
                 "the refusal's warning")
    send_and_receive(harness, valid_cloud())  # and the node goes on
    assert proc.poll() is None


# ------------------------------------------------------------------------------------ overload

OVERLOAD_LINE = re.compile(r"overloaded: dropped (\d+) of (\d+) frames in the last (\d+) s: the input rate "
                           r"([\d.]+) Hz exceeds the processing rate ([\d.]+) Hz")


def test_sustained_overload_logs_a_throttled_warning_with_the_rates(harness, node_process):
    """Clouds at four times the rate the node sustains here (measured first; 20 Hz at least), twice as
    fast again after every two windows without the warning, until the node's warning comes: the test
    holds on any machine. Frames dropped, counted and named in one line per window."""
    proc, log_path = node_process
    periods = []
    for _ in range(3):  # one frame in flight at a time: what the node sustains on this cloud here
        t0 = time.monotonic()
        send_and_receive(harness, valid_cloud("case_calibration"))
        periods.append(time.monotonic() - t0)
    # The median: the first round trip after a new frame_id holds a set-up of up to a second. 20 Hz at
    # least: on a loaded CPU the node's executor, sharing the GIL with inference, takes only some of the
    # samples (its DDS queue keeps the last one), and only those it takes can be counted as dropped. A
    # round trip is not the node's own rate (seen in CI: 20 Hz, kept up with, no drop in 120 s), hence
    # the doubling, down to 2 ms a cloud.
    interval = min(float(np.median(periods)) / 4.0, 0.05)
    before = fresh_counts(harness)
    offset = log_path.stat().st_size
    patience = 2 * OVERLOAD_WINDOW_S + 1.0  # two whole windows of the monitor at one rate
    start = next_check = time.monotonic()
    next_faster = start + patience
    sent, found = 0, None
    cloud = valid_cloud("case_overload")  # built once: building it here costs as much as a short interval
    next_send = start
    while found is None:
        assert time.monotonic() - start < HANG_GUARD_S, \
            f"no overload warning after {sent} frames:\n{log_since(log_path, offset)[-3000:]}"
        harness.publish(cloud)  # best effort, like a driver
        sent += 1
        next_send += interval  # paced by the clock: the publishing's own cost is part of the interval
        time.sleep(max(0.0, next_send - time.monotonic()))
        if time.monotonic() >= next_check:  # reading the log costs little, but not at every frame
            found = OVERLOAD_LINE.search(log_since(log_path, offset))
            next_check = time.monotonic() + 0.25
        if found is None and time.monotonic() >= next_faster:
            interval = max(interval / 2.0, 0.002)
            next_send = time.monotonic()
            next_faster = time.monotonic() + patience
    elapsed = time.monotonic() - start
    text = log_since(log_path, offset)
    lines = warn_lines(text, "overloaded: dropped")
    assert 1 <= len(lines) <= 1 + elapsed / 5.0, text[-3000:]  # at most one per 5 s window
    dropped, received, window, input_hz, processing_hz = OVERLOAD_LINE.search(lines[0]).groups()
    assert int(dropped) >= 3 and int(dropped) <= int(received)
    assert float(input_hz) > float(processing_hz)
    assert "unsubscribe outputs you do not need" in lines[0]
    after = fresh_counts(harness)
    assert int(after["frames_dropped"]) > int(before["frames_dropped"])
    send_and_receive(harness, valid_cloud("case_after_overload"))  # answered: the mailbox holds nothing stale
    assert proc.poll() is None
