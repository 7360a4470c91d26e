"""Overload, short: ssl3d_ros.evaluation.overload (what benchmarks/overload.py runs) for 10 s at 3x the
rate the node sustains on 120k-point clouds. The 60 s run and the soak are the benchmark itself
(``--duration``); ``SSL3D_SOAK=<seconds>`` makes this test run that long too.

Run inside the private network namespace: ``scripts/netns-run .venv/bin/python -m pytest test/test_overload.py``.
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")

from ssl3d_ros.evaluation.overload import run_overload  # noqa: E402

from builders import make_checkpoint, ros_env  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(os.environ.get("SSL3D_IN_NETNS") != "1",
                       reason="starts ROS 2 participants: run through scripts/netns-run"),
]


def test_overload_keeps_latency_bounded_counts_drops_and_memory_flat(tmp_path):
    ros_env()
    duration = float(os.environ.get("SSL3D_SOAK") or 10.0)
    checkpoint = make_checkpoint(tmp_path / "nano.safetensors", with_head=True, with_pca=False)
    r = run_overload(checkpoint, duration_s=duration, factor=3.0, device="cpu")
    summary = {k: v for k, v in r.items() if k != "node_log_tail"}
    print(summary)
    assert r["node_alive"], r["node_log_tail"]
    c = r["node_counts"]
    # Every frame the node received is accounted for, and overload shows up as counted drops.
    assert c["received"] == c["processed"] + c["dropped"] + c["rejected"] + c["errors"] + c["skipped_no_subscribers"]
    assert c["errors"] == c["rejected"] == 0
    assert c["dropped"] >= 1 and c["processed"] >= 3, summary
    # really overloaded: a third of what was sent or more went unanswered. The publisher's rate follows
    # the node up (3x its last second's rate), so a node that speeds up mid-run (another process's load
    # ending) is overloaded again within a second, though not over the whole run at 3x.
    assert r["published_hz"] >= 1.5 * r["answered_hz"], summary
    assert r["lost_in_transport"] >= 0
    # The latest frame is processed: outputs never go back in time, and the last frame sent is answered.
    assert r["outputs_in_order"] and r["last_published_answered"], summary
    # Bounded latency: a frame waits at most for the two frames that can be ahead of it in the node (one
    # computing, one publishing; the one-slot mailbox holds only the newest), so its node-measured latency
    # beyond its own and their processing times is input transport alone. A queue would add a processing
    # time per frame it held: at 3x overload, about 2 per second. Per frame and with the node's own
    # processing times, so a CPU shared with other busy processes (one frame stalled for 1.5 s, seen in CI)
    # makes frames slower, not queued, and this process's receive delays do not count.
    assert (r["queueing_ms"]["frames"] or 0) >= 3, summary  # None: a debug message was lost
    assert r["queueing_ms"]["max"] <= 1000.0, summary
    # Flat memory over the run (frames are replaced, never accumulated).
    assert r["rss_mb"]["growth"] <= 40.0, summary
