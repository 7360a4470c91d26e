"""Replay: a labelled bag through the offline pipeline and through the real node over DDS.

The bag holds simulated LiDAR scans with a ``label`` field and, in the middle, one cloud without the
intensity field of three values per point (the node must reject it). Counts in the report must match the
bag, and the scores must equal scoring the pipeline's own predictions directly.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl3d_ros.labels import load_class_map, segmentation_scores

TOPIC = "/lidar/points"
N_GOOD = 4
BAD_INDEX = 2  # position of the cloud whose intensity has count 3


@pytest.fixture(scope="module")
def scans():
    pytest.importorskip("open3d")
    from ssl3d_ros.sim import SimConfig, simulate_sequence

    return list(simulate_sequence(SimConfig(scene="outdoor"), N_GOOD, seed=2))


@pytest.fixture(scope="module")
def bag(scans, tmp_path_factory) -> Path:
    from ssl3d_ros.io.rosbag import BagWriter

    path = tmp_path_factory.mktemp("bags") / "labelled"
    bad = scans[BAD_INDEX - 1].select(np.arange(0, len(scans[BAD_INDEX - 1]), 7))
    # an intensity of three values per point: malformed for the model (a cloud without intensity is
    # processed with zero intensity since input.missing_intensity, so it no longer serves as the bad frame)
    bad.fields = {"intensity": np.zeros((len(bad), 3), np.float32)}
    bad.stamp_ns = (scans[BAD_INDEX - 1].stamp_ns + scans[BAD_INDEX].stamp_ns) // 2
    frames = scans[:BAD_INDEX] + [bad] + scans[BAD_INDEX:]
    with BagWriter(path) as writer:
        for scan in frames:
            writer.write_scan(TOPIC, scan, label_field="label")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An (untrained) nano encoder with a linear head over the simulator's classes."""
    from ssl3d_ros.checkpoint import ClassInfo, save_checkpoint
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.models.heads import LinearSegHead
    from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels

    cmap = load_class_map("sim-outdoor")
    pre = PreprocessConfig(voxel_size=0.2, max_range=40.0, features=("xyz", "height", "intensity"), coord_scale=20.0)
    torch.manual_seed(0)
    encoder = SparseEncoder(EncoderConfig.preset("nano", in_channels=feature_channels(pre)))
    head = LinearSegHead(encoder.hypercolumn_channels, cmap.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "with_head.safetensors"
    return save_checkpoint(path, encoder, preprocessing=pre, seg_head=head,
                           classes=ClassInfo(names=cmap.class_names, colors=[tuple(map(int, c)) for c in cmap.colors]))


@pytest.fixture(scope="module")
def expected_scores(checkpoint, scans):
    """Per-frame mIoU of the pipeline's predictions on the good scans, computed directly."""
    from ssl3d_ros.perception import PerceptionPipeline

    cmap = load_class_map("sim-outdoor")
    pipe = PerceptionPipeline.from_checkpoint(checkpoint, device="cpu")
    out = []
    for scan in scans:
        pred = pipe.process(scan, segmentation=True, embeddings=False).class_id.astype(np.int64)
        pred[pred == 255] = -1
        out.append(segmentation_scores(cmap.apply(scan.labels), pred, cmap.num_classes).miou)
    return out


def check_report(out: Path, expected: list[float], mode: str) -> dict:
    report = json.loads((out / "replay.json").read_text())
    assert report["mode"].startswith(mode)
    assert report["frames_in_bag"] == N_GOOD + 1 and report["sent"] == N_GOOD + 1
    assert report["outputs"] == N_GOOD and report["rejected"] == 1 and report["dropped"] == 0
    frames = report["frames"]
    assert [f["status"] for f in frames] == ["ok"] * BAD_INDEX + ["rejected"] + ["ok"] * (N_GOOD - BAD_INDEX)
    scored = [f["miou"] for f in frames if f["status"] == "ok"]
    np.testing.assert_allclose(scored, expected, rtol=1e-9)
    assert report["latency_ms"]["count"] == N_GOOD and report["latency_ms"]["p50"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p90"] <= report["latency_ms"]["p99"]
    for stage in ("pre", "inference", "post", "total"):
        assert report["stages_ms"][stage]["count"] == N_GOOD
    assert report["segmentation"]["miou"] is not None
    md = (out / "replay.md").read_text()
    assert "## Counts" in md and "## Segmentation" in md
    from matplotlib import image as mpimg

    for name in ("latency_histogram.png", "latency_timeline.png"):
        assert mpimg.imread(out / name).shape[:2] in ((400, 700), (400, 900))
    return report


def test_offline_replay_counts_and_scores(bag, checkpoint, expected_scores, tmp_path):
    from ssl3d_ros.evaluation.replay import main

    out = tmp_path / "offline"
    assert main([str(bag), "--checkpoint", str(checkpoint), "--offline", "--label-field", "label",
                 "--class-map", "sim-outdoor", "--out", str(out)]) == 0
    check_report(out, expected_scores, "offline")


def test_offline_replay_runs_the_pipeline_with_the_parameter_file(bag, checkpoint, scans, expected_scores, tmp_path):
    """--offline reads --params-file as the node does: here a mount that turns the LiDAR upside down
    (roll pi about base_link), so every frame is scored as the pipeline scores the flipped scan."""
    from ssl3d_ros.evaluation.node_harness import write_params
    from ssl3d_ros.evaluation.replay import main
    from ssl3d_ros.perception import Mount, PerceptionPipeline, rotation_from_rpy

    params = write_params(tmp_path / "perception.yaml", {"frame": {
        "base_frame": "base_link", "sensor_xyz": [0.0, 0.0, 0.0], "sensor_rpy": [3.141592653589793, 0.0, 0.0]}})
    pipe = PerceptionPipeline.from_checkpoint(checkpoint, device="cpu")
    cmap = load_class_map("sim-outdoor")
    flipped = Mount(rotation_from_rpy(math.pi, 0.0, 0.0), np.zeros(3), "base_link")
    expected = []
    for scan in scans:
        pred = pipe.process(scan, segmentation=True, embeddings=False, mount=flipped).class_id.astype(np.int64)
        pred[pred == 255] = -1
        expected.append(segmentation_scores(cmap.apply(scan.labels), pred, cmap.num_classes).miou)
    assert not np.allclose(expected, expected_scores)  # the flip changes what the model sees
    out = tmp_path / "offline_mounted"
    assert main([str(bag), "--checkpoint", str(checkpoint), "--offline", "--params-file", str(params),
                 "--label-field", "label", "--class-map", "sim-outdoor", "--out", str(out)]) == 0
    check_report(out, expected, "offline")


def _ros_available() -> bool:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("SSL3D_IN_NETNS") == "1"


@pytest.mark.skipif(not _ros_available(), reason="needs rclpy and the private network namespace (scripts/netns-run)")
def test_dds_replay_through_the_node_matches_the_bag(bag, checkpoint, expected_scores, tmp_path):
    from ssl3d_ros.evaluation.replay import main
    from ssl3d_ros.io.rosbag import BagSource

    out = tmp_path / "dds"
    recorded = tmp_path / "recorded"
    # Reliable input: the count assertions are about the replay's bookkeeping, not about best-effort
    # UDP dropping 600 kB clouds on a loaded machine (which the report would count as dropped).
    assert main([str(bag), "--checkpoint", str(checkpoint), "--mode", "keep-up", "--label-field", "label",
                 "--class-map", "sim-outdoor", "--out", str(out), "--record-out", str(recorded),
                 "--node-param", "input.qos.reliability:=reliable"]) == 0
    report = check_report(out, expected_scores, "dds/keep-up")
    # The node's own counters agree: it received every frame and rejected the malformed one.
    assert report["node_counts"]["received"] == N_GOOD + 1
    assert report["node_counts"]["rejected"] == 1 and report["node_counts"]["processed"] == N_GOOD
    assert report["unmatched_outputs"] == 0
    assert report["errors"] == 0
    # The node's log and parameters are in the report folder and listed in the report.
    assert report["node_files"] == {"node_log": str(out / "node.log"), "node_params": str(out / "node_params.yaml")}
    assert "listening on" in (out / "node.log").read_text() and "node.log" in (out / "replay.md").read_text()
    # Keep-up: the player waits for each answer while the simulated clock runs on, so the node's raw
    # "its clock - stamp" includes that wait; the node latency excludes it. It runs from the send to the
    # node's end of the frame, so it can never exceed the end-to-end latency, which ends later.
    ok = [f for f in report["frames"] if f["status"] == "ok"]
    for f in ok:
        assert f["node_latency_ms"] == pytest.approx(f["node_reported_latency_ms"] - f["stamp_age_ms"])
        assert f["node_latency_ms"] <= f["latency_ms"] + 1.0, f
    assert report["node_latency_ms"]["count"] == N_GOOD
    # The recording holds every input and the node's segmentation of each good frame.
    inputs = BagSource(recorded, topics=[TOPIC])
    outputs = BagSource(recorded, topics=["/ssl3d_perception/output/segmentation"])
    assert len(inputs) == N_GOOD + 1 and len(outputs) == N_GOOD
    first = outputs.message(0)
    assert first.width * first.height == inputs.message(0).width * inputs.message(0).height
    assert "class_id" in [f.name for f in first.fields]

    # outputs are recorded in the order of their inputs, each with its input's stamp
    def stamp(msg):
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    good = [stamp(inputs.message(i)) for i in range(len(inputs)) if i != BAD_INDEX]
    assert [stamp(outputs.message(i)) for i in range(len(outputs))] == good


@pytest.mark.skipif(not _ros_available(), reason="needs rclpy and the private network namespace (scripts/netns-run)")
def test_dds_replay_at_the_recorded_rate_accounts_for_every_frame(bag, checkpoint, tmp_path):
    """At 10 Hz the CPU node cannot keep up: frames overwritten in its one-slot mailbox are reported
    as dropped, and the report's totals equal the bag and the node's own counters."""
    from ssl3d_ros.evaluation.replay import main

    out = tmp_path / "recorded_rate"
    assert main([str(bag), "--checkpoint", str(checkpoint), "--mode", "recorded", "--rate", "1.0",
                 "--out", str(out), "--node-param", "input.qos.reliability:=reliable"]) == 0
    report = json.loads((out / "replay.json").read_text())
    node = report["node_counts"]
    assert report["mode"] == "dds/recorded x1"
    assert report["sent"] == report["frames_in_bag"] == N_GOOD + 1
    assert report["outputs"] + report["dropped"] + report["rejected"] == report["sent"]
    assert node["received"] == N_GOOD + 1
    assert report["outputs"] == node["processed"] >= 1
    assert report["dropped"] == node["dropped"] and report["rejected"] == node["rejected"] + node["errors"]
    assert report["input_rate_hz"] == pytest.approx(N_GOOD / 0.3, rel=0.3)  # bag spans 0.3 s
    assert report["segmentation"] is None  # no labels asked for


def test_recording_keeps_outputs_in_input_order_when_a_latency_exceeds_the_frame_gap(tmp_path):
    """Frame 0 took 250 ms, frame 1 (100 ms later in the bag) 20 ms: bag time + latency would log
    frame 1's output first; the node answered them in order, so the recording must too."""
    from ssl3d_ros.evaluation.replay import BagFrame, write_recording
    from ssl3d_ros.evaluation.replay_stats import FrameRecord
    from rosbags.typesys import Stores, get_typestore

    from ssl3d_ros.io.rosbag import BagSource

    store = get_typestore(Stores.ROS2_HUMBLE)
    Cloud, Header, Time = (store.types[n] for n in ("sensor_msgs/msg/PointCloud2", "std_msgs/msg/Header",
                                                     "builtin_interfaces/msg/Time"))

    def raw(stamp_ns: int) -> bytes:
        msg = Cloud(header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="lidar"),
                    height=1, width=0, fields=[], is_bigendian=False, point_step=0, row_step=0,
                    data=np.zeros(0, np.uint8), is_dense=True)
        return bytes(store.serialize_cdr(msg, Cloud.__msgtype__))

    stamps = [10**9, 10**9 + 100_000_000]
    frames = [BagFrame(i, s, s, raw(s), 0, None) for i, s in enumerate(stamps)]
    records = [FrameRecord(i, s, 0, sent_s=0.0, received_s=lat, status="ok") for i, (s, lat) in enumerate(zip(stamps, (0.25, 0.02)))]
    outputs = {s: (None, None, raw(s)) for s in stamps}
    write_recording(str(tmp_path / "rec"), frames, records, outputs, "/points", "/seg")
    recorded = BagSource(tmp_path / "rec", topics=["/seg"])
    got = [recorded.message(i).header.stamp for i in range(len(recorded))]
    assert [(t.sec, t.nanosec) for t in got] == [(s // 10**9, s % 10**9) for s in stamps]


# ------------------------------------------------------------------------- issue 14, item 6: reports


@pytest.mark.parametrize("explicit", [False, True], ids=["packaged-default", "explicit-path"])
def test_a_class_map_the_checkpoint_does_not_have_is_refused_with_or_without_checkpoint(explicit, tmp_path, capsys):
    """The packaged checkpoint's 11 simulator classes against SemanticKITTI's 19: refused before the bag
    is read (it does not exist here), in one line and exit 2, whether the checkpoint is named or not."""
    from ssl3d_ros.evaluation.replay import main
    from ssl3d_ros.checkpoint import packaged_checkpoint

    packaged = packaged_checkpoint()
    out = tmp_path / "report"
    args = [str(tmp_path / "never_read"), "--offline", "--label-field", "label", "--class-map", "semantickitti",
            "--out", str(out)] + (["--checkpoint", str(packaged)] if explicit else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ssl3d-replay: ") and str(packaged) in err
    assert "'semantickitti'" in err and "scores would compare different classes" in err
    assert ("packaged default checkpoint" in err) is not explicit
    assert not out.exists()


def test_a_malformed_node_param_is_refused_in_one_line(tmp_path, capsys):
    from ssl3d_ros.evaluation.replay import main

    assert main([str(tmp_path / "never_read"), "--node-param", "input.qos.depth=2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ssl3d-replay: --node-param 'input.qos.depth=2': expected NAME:=VALUE"


def test_node_failures_are_errors_not_rejections(tmp_path):
    """A frame the node failed on (frames_errors) is an error, a malformed one (frames_rejected) rejected,
    in keep-up mode as it happens and at the recorded rate from the node's totals; the report counts
    them apart and lists the node's log."""
    from ssl3d_ros.evaluation.replay import assign_unanswered, failure_status
    from ssl3d_ros.evaluation.replay_stats import FrameRecord, summarise, write_replay_report

    before = {"received": 3, "rejected": 1, "errors": 0}
    assert failure_status(before, {**before, "errors": 1}) == "error"
    assert failure_status(before, {**before, "rejected": 2}) == "rejected"
    assert failure_status(before, {**before, "errors": 1, "rejected": 2}) == "error"
    assert failure_status(before, {**before, "received": 4}) is None

    records = [FrameRecord(i, 100 + i, 10, sent_s=float(i)) for i in range(6)]
    records[0].received_s, records[0].status = 0.05, "ok"
    records[1].status = "error"  # told apart in keep-up mode
    assign_unanswered(records, {"rejected": 2, "errors": 2, "dropped": 1})
    assert [r.status for r in records] == ["ok", "error", "rejected", "rejected", "error", "dropped"]

    summary = summarise(records, mode="dds/recorded x1", source="bag", topic="/points", checkpoint="",
                        frames_in_bag=6, node_files={"node_log": str(tmp_path / "node.log")})
    assert (summary.rejected, summary.errors, summary.dropped, summary.outputs) == (2, 2, 1, 1)
    write_replay_report(summary, records, tmp_path)
    report = json.loads((tmp_path / "replay.json").read_text())
    assert report["errors"] == 2 and report["rejected"] == 2
    assert report["node_files"]["node_log"] == str(tmp_path / "node.log")
    md = (tmp_path / "replay.md").read_text()
    assert " errors " in md.splitlines()[md.splitlines().index("## Counts") + 2]
    assert f"node_log: `{tmp_path / 'node.log'}`" in md
