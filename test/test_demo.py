"""`make demo` end to end at toy size: simulate -> pretrain -> probe head -> replay over DDS -> pictures."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest



def test_demo_pretrain_folder_changes_with_recipe_config_and_budget(tmp_path):
    from ssl3d_ros.demo import pretrain_folder

    config = tmp_path / "sonata.yaml"
    config.write_text("recipe: {name: sonata}\n")
    base = pretrain_folder(tmp_path, "sonata", config, 800, 0, 120)
    assert base == pretrain_folder(tmp_path, "sonata", config, 800, 0, 120)  # a re-run resumes its own run
    others = {pretrain_folder(tmp_path, "msm", config, 800, 0, 120), pretrain_folder(tmp_path, "sonata", config, 400, 0, 120),
              pretrain_folder(tmp_path, "sonata", config, 800, 1, 120), pretrain_folder(tmp_path, "sonata", config, 800, 0, 60)}
    config.write_text("recipe: {name: sonata}\npreprocessing: {features: [xyz, constant]}\n")
    others.add(pretrain_folder(tmp_path, "sonata", config, 800, 0, 120))
    assert base not in others and len(others) == 5


@pytest.mark.ros
@pytest.mark.skipif(os.environ.get("SSL3D_IN_NETNS") != "1", reason="starts ROS participants: run via scripts/netns-run")
def test_demo_runs_every_step_and_writes_its_report(tmp_path):
    out = tmp_path / "demo"
    try:  # inside pytest-timeout's 300 s, so that a stuck demo fails with its own output, not a bare stack
        result = subprocess.run(
            [sys.executable, "-m", "ssl3d_ros.demo", "--recipe", "jepa", "--train-scans", "6", "--eval-scans", "4",
             "--steps", "4", "--probe-scans", "2", "--out", str(out)],
            capture_output=True, text=True, timeout=270,
        )
    except subprocess.TimeoutExpired as exc:
        tail = b"".join(part[-3000:] for part in (exc.stdout, exc.stderr) if part).decode(errors="replace")
        pytest.fail(f"the demo did not finish in {exc.timeout:.0f} s; its output ends:\n{tail}")
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
