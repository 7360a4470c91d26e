"""`make demo` end to end at toy size: simulate -> pretrain -> probe head -> replay over DDS -> pictures."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ros


@pytest.mark.skipif(os.environ.get("SSL3D_IN_NETNS") != "1", reason="starts ROS participants: run via scripts/netns-run")
def test_demo_runs_every_step_and_writes_its_report(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "ssl3d_ros.demo", "--recipe", "jepa", "--train-scans", "6", "--eval-scans", "4",
         "--steps", "4", "--probe-scans", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"demo output folder: {out}" in result.stdout
    probe = json.loads((out / "probe" / "report.json").read_text())
    assert {(r["encoder"], r["probe"]) for r in probe["results"]} >= {("checkpoint", "linear"), ("random init", "linear")}
    replay = json.loads((out / "replay" / "replay.json").read_text())
    assert replay["frames_in_bag"] == 4
    assert replay["sent"] == 4 and replay["outputs"] + replay["dropped"] + replay["rejected"] == 4
    assert replay["outputs"] >= 1 and replay["segmentation"] is not None
    assert sorted(p.suffix for p in (out / "pictures").iterdir()) and all(
        p.stat().st_size > 1000 for p in (out / "pictures").glob("*.png"))
    report = (out / "report.md").read_text()
    assert "mIoU" in report and "latency" in report
