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
