"""Two-process DDP over gloo, started by torchrun exactly as on a multi-GPU node."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from ssl3d_ros.training import state as state_io

from builders import read_metrics, tiny_config

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_run_and_resume(tmp_path):
    from ssl3d_ros.checkpoint import load_checkpoint

    out = tmp_path / "run"
    config = tmp_path / "sonata.yaml"
    config.write_text(yaml.safe_dump(tiny_config("sonata", out, steps=4, checkpoint_every=2).to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "ssl3d_ros.training.pretrain", "--config", str(config), "--no-progress", "--device", "cpu"]

    first = subprocess.run(base + ["--steps", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-4000:]
    # rank 0 exports the encoder and says where; rank 1 has nothing to report (it printed "written to None")
    assert first.stdout.count("encoder written to") == 1 and "written to None" not in first.stdout, first.stdout
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    # two ranks x batch 2 x 4 steps: each rank read its own half of every global batch
    ckpt = load_checkpoint(out / "encoder.safetensors")
    assert ckpt.training_data["scans_seen"] == 2 * 2 * 4
    state4 = state_io.load_latest(out / "checkpoints")
    assert state4.step == 4

    # resume the same run for two more steps under DDP
    second = subprocess.run(base + ["--steps", "6", "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    state6 = state_io.load_latest(out / "checkpoints")
    assert state6.step == 6 and state6.extra["counters"]["scans_seen"] == 2 * 2 * 6
    changed = [k for k in state4.model if not torch.equal(state4.model[k], state6.model[k])]
    assert changed  # training continued


def test_every_recipe_steps_under_ddp_without_unused_parameter_search(tmp_path):
    """DDP runs with find_unused_parameters=False: every recipe's parameters that never get a gradient
    are declared (Recipe.unused_parameters), or its second step fails; the ranks' weights stay equal;
    no DDP warning (unused-parameter search, deprecated broadcast_buffers) is raised."""
    import json

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "test" / "ddp_recipe_steps.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(report) == ["acl", "jepa", "mae", "msm", "sonata"]
    for recipe, r in report.items():
        assert r["steps"] == 2
        first, second = r["student_checksums"]
        assert first == second, f"{recipe}: the ranks' weights diverged ({first} vs {second})"
        assert r["warnings"] == [[], []], f"{recipe}: {r['warnings']}"
    for text in ("find_unused_parameters", "broadcast_buffers", "unused parameters"):
        assert text not in proc.stderr, proc.stderr[-4000:]
