"""Novelty over real DDS: the node (its console script, a checkpoint holding a novelty reference fitted
on a simulated street) publishes ``~/output/novelty`` with the input's header and the score offline
inference gives, a per-point ``novelty`` field in the segmentation cloud, and a WARN diagnostic once
enough recent frames (a simulated room) are novel.

Run inside the private network namespace: ``scripts/netns-run .venv/bin/python -m pytest test/test_node_novelty.py``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from ssl3d_ros.codec import FLOAT32, decode_cloud, encode_cloud, fill_cloud_message  # noqa: E402

from builders import INPUT_TOPIC, NODE_TEST_PARAMS, OUT, make_checkpoint, sim_scan  # noqa: E402

pytestmark = pytest.mark.ros

THRESHOLD = 2.0
WINDOW = 3
WARN_SHARE = 0.6  # two novel frames of the last three
NOVELTY = OUT + "novelty"
SEGMENTATION = OUT + "segmentation"


def room(index: int):
    from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar

    cfg = with_lidar(SimConfig(scene="indoor"), beams=16, columns=512)
    return list(simulate_sequence(cfg, index + 1, seed=0))[index]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-init nano checkpoint with a head, a PCA basis and a novelty reference of four frames of a
    simulated street (overrides conftest's)."""
    import torch

    from ssl3d_ros.checkpoint import add_heads, load_checkpoint
    from ssl3d_ros.training.novelty import fit_on_scans

    folder = tmp_path_factory.mktemp("novelty_node")
    plain = make_checkpoint(folder / "plain.safetensors", with_head=True, with_pca=True)
    ckpt = load_checkpoint(plain)
    reference = fit_on_scans(ckpt.encoder, [sim_scan(seed=0, index=i) for i in range(4)], ckpt.preprocessing,
                             torch.device("cpu"))
    return add_heads(plain, folder / "with_reference.safetensors", novelty=reference)


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    from ssl3d_ros.evaluation.node_harness import write_params

    params = {**NODE_TEST_PARAMS, "novelty": {"threshold": THRESHOLD, "window": WINDOW, "warn_share": WARN_SHARE,
                                              "per_point": True}}
    return write_params(tmp_path_factory.mktemp("novelty_params") / "perception.yaml", params)


@pytest.fixture(scope="module")
def harness():
    """Subscribes to every output, ~/output/novelty included (overrides conftest's)."""
    from builders import ros_env

    from ssl3d_ros.evaluation.node_harness import OUTPUTS, Harness

    ros_env()
    h = Harness(INPUT_TOPIC, name="ssl3d_test_novelty", outputs=(*OUTPUTS, "novelty"))
    yield h
    h.close()


def _cloud(scan, stamp_ns: int) -> PointCloud2:
    fields = {"intensity": scan.fields["intensity"]}
    msg = fill_cloud_message(PointCloud2(), encode_cloud(scan.points, fields), PointField)
    msg.header.frame_id = scan.frame_id or "lidar"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def _send(harness, scan) -> tuple[PointCloud2, dict]:
    """Publish one scan and wait for its novelty and segmentation outputs (one at a time: the node keeps
    only the newest waiting scan)."""
    msg = _cloud(scan, time.time_ns())
    harness.reliable.publish(msg)
    arrivals = harness.outputs_for(msg.header, [NOVELTY, SEGMENTATION], 120.0)
    return msg, {topic: arrival.msg for topic, arrival in arrivals.items()}


def test_novelty_arrives_with_the_input_stamp_and_warns_on_novel_frames(harness, node_process, offline):
    familiar, novel = sim_scan(seed=0, index=0), [room(0), room(1)]
    expected = [offline.process_cloud(_cloud(s, 1), point_novelty=True).result for s in [familiar, *novel]]
    # the premise: the reference's own street is under the threshold, the room over it
    assert expected[0].novelty < THRESHOLD < min(r.novelty for r in expected[1:]), [r.novelty for r in expected]

    msg, out = _send(harness, familiar)
    reading = out[NOVELTY]
    assert reading.header.frame_id == msg.header.frame_id
    assert (reading.header.stamp.sec, reading.header.stamp.nanosec) == (msg.header.stamp.sec, msg.header.stamp.nanosec)
    assert reading.vector.x == pytest.approx(expected[0].novelty, rel=1e-3)
    assert reading.vector.y == pytest.approx(expected[0].novelty_voxel_share, abs=1e-3)
    assert reading.vector.z == 0.0  # no frame of the window over the threshold
    seg = decode_cloud(out[SEGMENTATION])
    assert [(f.name, f.offset, f.datatype) for f in out[SEGMENTATION].fields][-1] == ("novelty", 24, FLOAT32)
    np.testing.assert_allclose(seg.field_values("novelty"), expected[0].point_novelty, rtol=1e-3, atol=1e-4)
    values = harness.latest_diagnostics(lambda v: v.get("novelty_last") not in (None, ""), 20, "a novelty score")
    assert values["novelty_enabled"] == "true" and "novel input" not in values["_message"]

    shares = []
    for scan, frame in zip(novel, expected[1:]):
        _, out = _send(harness, scan)
        assert out[NOVELTY].vector.x == pytest.approx(frame.novelty, rel=1e-3)
        shares.append(out[NOVELTY].vector.z)
    assert shares == [pytest.approx(1 / WINDOW), pytest.approx(2 / WINDOW)]
    values = harness.latest_diagnostics(lambda v: "novel input" in v["_message"], 20, "the novelty WARN")
    assert values["_level"] == DiagnosticStatus.WARN
    assert values["_message"].startswith(f"novel input: 2 of the last {WINDOW} frames score over novelty.threshold 2")
    assert float(values["novelty_share_over_threshold"]) == pytest.approx(2 / WINDOW, abs=0.01)
    assert node_process[0].poll() is None
