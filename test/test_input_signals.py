"""The policies behind the node's signals about its input, without DDS (issue 28, part C): header problems,
a suspect ``is_bigendian`` flag, Python warnings (fixed at their sources, the rest routed to the log), the
transport's size limit against ``input.max_points``, sustained overload. test/test_node_signals.py sends
the same cases to the real node over DDS."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from ssl3d_ros.codec import FLOAT32, FLOAT64, encode_cloud
from ssl3d_ros.labels import NO_CLASS
from ssl3d_ros.perception import (
    DEFAULT_MAX_INPUT_POINTS, HEADER_PROBLEM_KINDS, OK, OUTPUTS, SEGMENT_MARGIN, WARN, DiagnosticsConfig, DiagnosticsPolicy,
    NodeConfig, NodeStats, OutputEncoder, OutputSelection, OverloadMonitor, PerceptionPipeline, WarningThrottle,
    big_endian_suspect, frame_warnings, header_problems, input_transport_lines, loggable_frame_id,
    node_config_from_params, resolve_max_input_points, route_python_warnings, shared_memory_segment,
    transport_values,
)
from ssl3d_ros.preprocessing import PreprocessConfig, preprocess
from ssl3d_ros.scan import Scan

from builders import make_checkpoint, sim_scan

NOW_NS = 1_765_000_000 * 10**9  # the node's clock in these tests (December 2025)


# ------------------------------------------------------------------------------------ headers


def kinds(frame_id: str, sec: int, nanosec: int, now_ns: int | None = NOW_NS) -> list[str]:
    return [p.kind for p in header_problems(frame_id, sec, nanosec, now_ns)]


def test_a_sound_header_has_no_problem():
    assert kinds("velodyne", NOW_NS // 10**9, 5) == []
    assert kinds("velodyne", 1_300_000_000, 0) == []  # a recording's old stamp is fine (replays)
    assert kinds("velodyne", NOW_NS // 10**9 + 3600, 0) == []  # an hour of clock skew is not "broken"


@pytest.mark.parametrize("frame_id, sec, nanosec, expected, field_text", [
    ("", NOW_NS // 10**9, 0, ["frame_id_empty"], "empty header.frame_id"),
    ("x" * 10_000, NOW_NS // 10**9, 0, ["frame_id_too_long"], "header.frame_id of 10000 characters"),
    ("lidar", 0, 0, ["stamp_zero"], "header.stamp 0 (sec 0, nanosec 0)"),
    ("lidar", 2**31 - 1, 0, ["stamp_in_future"], "header.stamp.sec = 2147483647"),
    ("lidar", NOW_NS // 10**9, 1_500_000_000, ["stamp_nanosec_out_of_range"], "header.stamp.nanosec = 1500000000"),
    ("lidar", -5, 0, ["stamp_sec_negative"], "negative header.stamp.sec = -5"),
])
def test_each_header_problem_is_named_with_its_field_and_value(frame_id, sec, nanosec, expected, field_text):
    problems = header_problems(frame_id, sec, nanosec, NOW_NS)
    assert [p.kind for p in problems] == expected
    assert field_text in problems[0].message
    assert "the outputs keep the input's stamp and frame_id unchanged" in problems[0].message
    assert len(problems[0].message) < 600  # a 10 kB frame_id is cut in the log line


def test_problems_combine_and_come_in_a_fixed_order():
    assert kinds("", 0, 2_000_000_000) == ["frame_id_empty", "stamp_nanosec_out_of_range"]
    assert set(kinds("", -1, 10**9)) <= set(HEADER_PROBLEM_KINDS)


def test_a_simulated_clock_before_its_first_message_skips_the_future_check():
    assert kinds("lidar", 2**31 - 1, 0, now_ns=0) == []
    assert kinds("lidar", 2**31 - 1, 0, now_ns=None) == []


def test_frame_ids_in_log_lines_are_cut_and_escaped():
    assert loggable_frame_id("lidar") == "'lidar'"
    long = loggable_frame_id("a" * 300)
    assert long.endswith("... (300 characters)") and len(long) < 100
    assert "\n" not in loggable_frame_id("evil\n[WARN] forged line")  # a newline cannot forge a log line
    messages = [m for _, m in frame_warnings("z" * 10_000, np.zeros((3, 3), np.float32), 3, 0, None, True, "i")]
    assert messages and all(len(m) < 600 for m in messages)


def test_diagnostics_count_header_problems_per_kind_and_warn_once():
    stats, policy = NodeStats(), DiagnosticsPolicy(DiagnosticsConfig(stale_after_s=1e9), 0.0)
    stats.received_at(0.5)
    assert policy.report(stats, 1.0, {}).values["frames_header_stamp_zero"] == "0"
    stats.count_header_problems(["stamp_zero", "frame_id_empty"])
    stats.count_header_problems(["stamp_zero"])
    report = policy.report(stats, 2.0, {})
    assert report.level == WARN and "header problems: frame_id_empty in 1 frame(s), stamp_zero in 2 frame(s)" in report.message
    assert report.values["frames_header_stamp_zero"] == "2"
    assert report.values["frames_header_frame_id_empty"] == "1"
    assert all(f"frames_header_{k}" in report.values for k in HEADER_PROBLEM_KINDS)
    assert policy.report(stats, 3.0, {}).level == OK  # nothing new since


def test_frames_with_a_meaningless_stamp_stay_out_of_the_latency_figures():
    stats, policy = NodeStats(), DiagnosticsPolicy(DiagnosticsConfig(stale_after_s=1e9), 0.0)
    stats.add_frame({}, 50.0, 80.0)
    stats.add_frame({}, 50.0, None)  # stamp 0: "now - stamp" is 56 years
    assert policy.report(stats, 1.0, {}).values["pipeline_latency_ms_median"] == "80.00"


# ------------------------------------------------------------------------------------ is_bigendian


def packed_cloud(columns: dict[str, np.ndarray], types: dict[str, str], *, bigendian_flag: bool,
                 write_bigendian: bool) -> SimpleNamespace:
    """A PointCloud2-like message: its bytes written in one order, its flag saying whichever."""
    order = ">" if write_bigendian else "<"
    dtype = np.dtype([(name, np.dtype(types[name]).newbyteorder(order)) for name in columns])
    arr = np.zeros(len(next(iter(columns.values()))), dtype)
    for name, values in columns.items():
        arr[name] = values
    codes = {"f4": FLOAT32, "f8": FLOAT64}
    return SimpleNamespace(
        height=1, width=len(arr), point_step=dtype.itemsize, row_step=dtype.itemsize * len(arr),
        is_bigendian=bigendian_flag, data=arr.tobytes(), is_dense=False,
        fields=[SimpleNamespace(name=n, offset=dtype.fields[n][1], datatype=codes[types[n]], count=1) for n in columns],
        header=SimpleNamespace(frame_id="lidar", stamp=SimpleNamespace(sec=0, nanosec=0)),
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("signals") / "nano.safetensors", with_head=True, with_pca=True)
    return PerceptionPipeline.from_checkpoint(ckpt, device="cpu", overrides=node_config_from_params({"device": "cpu"}))


@pytest.fixture(scope="module")
def scan():
    return sim_scan(seed=11, beams=16, columns=256)


def xyzi(scan: Scan) -> dict[str, np.ndarray]:
    p = scan.points
    return {"x": p[:, 0], "y": p[:, 1], "z": p[:, 2], "intensity": scan.fields["intensity"]}


F4 = {"x": "f4", "y": "f4", "z": "f4", "intensity": "f4"}


def test_little_endian_data_flagged_big_endian_is_suspect_and_warned(pipeline, scan):
    wrong = packed_cloud(xyzi(scan), F4, bigendian_flag=True, write_bigendian=False)
    result = pipeline.process_cloud(wrong).result
    total, invalid = result.valid.size, result.valid.size - result.num_valid
    assert invalid / total > 0.9  # byte-swapped floats: NaN, huge or tiny
    assert big_endian_suspect(True, invalid, total)
    lines = dict(frame_warnings("lidar", np.zeros((total, 3)), invalid, 0, None, False, "intensity", True))
    line = lines["big_endian_mostly_invalid"]
    assert "is_bigendian=true" in line and f"{100 * invalid / total:.0f} %" in line
    stats = NodeStats()
    stats.add_points(invalid, total, is_bigendian=True)
    assert (stats.big_endian, stats.big_endian_mostly_invalid) == (1, 1)


def test_real_big_endian_data_is_counted_but_not_suspect(pipeline, scan):
    right = packed_cloud(xyzi(scan), F4, bigendian_flag=True, write_bigendian=True)
    result = pipeline.process_cloud(right).result
    total, invalid = result.valid.size, result.valid.size - result.num_valid
    assert invalid / total < 0.5
    assert not big_endian_suspect(True, invalid, total)
    assert not big_endian_suspect(False, total, total)  # a little-endian cloud is never suspect on this count
    assert "big_endian_mostly_invalid" not in dict(frame_warnings("lidar", np.zeros((total, 3)), invalid, 0, None,
                                                                  False, "intensity", True))
    stats = NodeStats()
    stats.add_points(invalid, total, is_bigendian=True)
    assert (stats.big_endian, stats.big_endian_mostly_invalid) == (1, 0)


# ------------------------------------------------------------------------------------ Python warnings


def hostile_clouds(scan: Scan) -> dict[str, SimpleNamespace]:
    """The issue's clouds that printed raw Python warnings: intensity 1e300 in a float64 field,
    Inf / 1e38 / 3e38 coordinates, and a message whose buffer is read-only."""
    columns = xyzi(scan)
    huge = dict(columns, intensity=columns["intensity"].astype(np.float64))
    huge["intensity"][::7] = 1e300
    far = {k: v.copy() for k, v in columns.items()}
    far["x"][::5], far["y"][1::5], far["z"][2::5], far["x"][3::5] = np.inf, 1e38, -1e38, 3e38
    read_only = packed_cloud(columns, F4, bigendian_flag=False, write_bigendian=False)
    read_only.data = np.frombuffer(read_only.data, np.uint8)  # bytes: numpy marks it read-only
    assert not read_only.data.flags.writeable
    return {
        "intensity_1e300_float64": packed_cloud(huge, dict(F4, intensity="f8"), bigendian_flag=False, write_bigendian=False),
        "inf_and_1e38_points": packed_cloud(far, F4, bigendian_flag=False, write_bigendian=False),
        "read_only_buffer": read_only,
    }


@pytest.mark.parametrize("case", ["intensity_1e300_float64", "inf_and_1e38_points", "read_only_buffer"])
def test_hostile_values_raise_no_python_warning_and_give_sane_outputs(pipeline, scan, case):
    msg = hostile_clouds(scan)[case]
    encoder = OutputEncoder.for_classes(pipeline.class_names, pipeline.class_colors, NodeConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        cloud = pipeline.process_cloud(msg)
        outputs = {name: payload for name, payload, _ in encoder.encode(cloud, OutputSelection())}
    result = cloud.result
    assert 0 < result.num_valid < len(scan)
    bad = ~result.valid
    assert (result.class_id[bad] == NO_CLASS).all()
    assert (result.probability[bad] == 0).all() and (result.entropy[bad] == 1).all()
    assert np.isfinite(result.probability).all() and np.isfinite(result.entropy).all()
    assert np.isfinite(result.voxel_embedding).all() and np.isfinite(result.voxel_coord).all()
    assert set(outputs) == set(OUTPUTS)
    assert (outputs["occupancy"].data != -1).any()  # the valid points still mark cells
    if case == "intensity_1e300_float64":  # beyond float32's range: unusable, like a non-finite value
        assert not result.valid[::7].any()
    if case == "inf_and_1e38_points":
        assert not result.valid[::5].any() and not result.valid[1::5].any() and not result.valid[3::5].any()


def test_preprocessing_takes_read_only_and_float64_arrays_quietly():
    rng = np.random.default_rng(0)
    points = rng.uniform(-10, 10, (500, 3))  # float64
    intensity = rng.uniform(0, 1, 500)
    intensity[:5] = 1e300
    points.flags.writeable = intensity.flags.writeable = False  # a memory-mapped scan, say
    cfg = PreprocessConfig(voxel_size=0.5, features=("xyz", "intensity"), intensity_scale="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vox = preprocess(Scan(points, {"intensity": intensity}), cfg)
    assert not vox.point_valid[:5].any() and vox.point_valid[5:].all()
    assert vox.intensity_scale == 1.0  # the 1e300 values do not set the scale


def test_python_warnings_become_one_throttled_log_line():
    lines: list[str] = []
    clock = [0.0]
    restore = route_python_warnings(lines.append, WarningThrottle(period_s=10.0, clock=lambda: clock[0]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for _ in range(3):
                warnings.warn("overflow encountered in cast\n  (second line)", RuntimeWarning)
            warnings.warn("something else", UserWarning)
            clock[0] = 11.0
            warnings.warn("overflow encountered in cast\n  (second line)", RuntimeWarning)
    finally:
        restore()
    assert len(lines) == 3, lines
    assert lines[0].startswith("Python RuntimeWarning at test_input_signals.py:")
    assert lines[0].endswith(": overflow encountered in cast (second line)")
    assert "Warning:" not in lines[0]  # not Python's raw "file:line: Category: text" form
    assert lines[1].startswith("Python UserWarning at")
    assert lines[2].endswith("[2 more like this in the last 10 s]")
    before = len(lines)  # restored: Python's own hook shows (here: records) what comes next
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        warnings.warn("after restore", UserWarning)
    assert len(lines) == before


# ------------------------------------------------------------------------------------ transport


def profile(tmp_path, segment: int):
    path = tmp_path / f"profile_{segment}.xml"
    path.write_text(f"<profiles><transport_descriptor><segment_size>{segment}</segment_size>"
                    "</transport_descriptor></profiles>")
    return shared_memory_segment({"FASTDDS_DEFAULT_PROFILES_FILE": str(path)})


def test_auto_max_points_agrees_with_the_profiles_segment(tmp_path):
    large, small = profile(tmp_path, 64 * 2**20), profile(tmp_path, 4 * 2**20)
    assert resolve_max_input_points(-1, large) == DEFAULT_MAX_INPUT_POINTS  # 4 M x 16 B fit 64 MiB
    assert resolve_max_input_points(-1, small) == (4 * 2**20 - SEGMENT_MARGIN) // 16 == 258_048
    # no profile: the default segment says nothing about the senders' (they are asked for the profile)
    assert resolve_max_input_points(-1, shared_memory_segment({})) == DEFAULT_MAX_INPUT_POINTS
    assert resolve_max_input_points(-1, None) == DEFAULT_MAX_INPUT_POINTS  # another middleware
    assert resolve_max_input_points(123, small) == 123 and resolve_max_input_points(0, small) == 0  # as set
    assert NodeConfig().input.max_points == -1
    with pytest.raises(Exception, match="input.max_points"):
        node_config_from_params({"input.max_points": -2})
    # offline (no transport) auto is the default limit
    assert DEFAULT_MAX_INPUT_POINTS == 4_000_000


def test_start_up_lines_say_what_the_transport_carries_and_what_disagrees(tmp_path):
    small = profile(tmp_path, 4 * 2**20)
    info, warns = input_transport_lines(-1, 258_048, small, "best_effort")
    assert warns == []
    assert "4 MiB" in info[0] and "up to 4.1 MB" in info[0] and "258048 points at 16 B/point" in info[0]
    assert "input.max_points = 258048 (auto)" in info[0]
    _, warns = input_transport_lines(1_000_000, 1_000_000, small, "best_effort")
    assert len(warns) == 1 and "input.max_points = 1000000 admits clouds of up to 16.0 MB" in warns[0]
    assert "vanishes in transport" in warns[0]
    assert input_transport_lines(1_000_000, 1_000_000, small, "reliable")[1] == []  # UDP fragments carry it
    _, warns = input_transport_lines(-1, DEFAULT_MAX_INPUT_POINTS, shared_memory_segment({}), "best_effort")
    assert len(warns) == 1 and "FASTDDS_DEFAULT_PROFILES_FILE" in warns[0] and "every sender" in warns[0]
    values = transport_values(258_048, small)
    assert values["input_max_points"] == "258048"
    assert values["transport_max_cloud_bytes"] == str(4 * 2**20 - SEGMENT_MARGIN)
    assert values["transport_max_cloud_points_16b"] == "258048"
    assert transport_values(5, None)["transport_max_cloud_bytes"] == "unknown"


# ------------------------------------------------------------------------------------ overload


def test_sustained_overload_gives_one_line_per_window_with_the_rates():
    stats, monitor = NodeStats(), OverloadMonitor(start_mono=0.0, window_s=5.0)

    def run(seconds: float, start: float, input_hz: float, processed_hz: float) -> None:
        for i in range(int(seconds * input_hz)):
            stats.received_at(start + i / input_hz)
        dropped = int(seconds * input_hz) - int(seconds * processed_hz)
        for _ in range(dropped):
            stats.count("dropped")
        for _ in range(int(seconds * processed_hz)):
            stats.add_frame({}, 450.0, 500.0)

    run(5.0, 0.0, 20.0, 2.0)  # the 20 Hz HDL-64 against ~2 Hz
    assert monitor.check(stats, 4.9) is None  # the window is still open
    line = monitor.check(stats, 5.0)
    assert line.startswith("overloaded: dropped 90 of 100 frames in the last 5 s: the input rate 20.0 Hz exceeds "
                           "the processing rate 2.0 Hz, median 450 ms a frame")
    assert "unsubscribe outputs" in line
    assert monitor.check(stats, 6.0) is None  # at most one line per window
    run(5.0, 5.0, 10.0, 9.0)  # keeping up but for one frame a second: jitter, not overload
    assert monitor.check(stats, 10.0) is None
    run(5.0, 10.0, 10.0, 10.0)
    assert monitor.check(stats, 15.0) is None
