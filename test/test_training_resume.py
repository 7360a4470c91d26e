"""Resumption: a run stopped and resumed ends with exactly the parameters of an uninterrupted run;
SIGKILL loses at most one checkpoint interval; Ctrl-C saves and exits cleanly; bad scans are skipped
and counted end to end."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ssl3d_ros.training import state as state_io
from ssl3d_ros.training.loop import train

from builders import read_metrics, tiny_config

REPO = Path(__file__).resolve().parents[1]


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = state_io.load_state(a), state_io.load_state(b)
    assert sa.step == sb.step
    assert sa.model.keys() == sb.model.keys()
    for key in sa.model:
        assert torch.equal(sa.model[key], sb.model[key]), f"{key} differs after resume"
    for index, values in sa.optimizer["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb.optimizer["state"][index][name])), f"optimizer {index}.{name}"


@pytest.mark.parametrize("recipe", ["sonata", "jepa"])
def test_resume_matches_uninterrupted_run(recipe, tmp_path):
    steps = 6
    straight = tiny_config(recipe, tmp_path / "straight", steps=steps)
    train(straight, progress=False)

    # stopped after step 4 (checkpoint interval 3: the stop itself saves), resumed in a fresh model
    # with a DataLoader worker process this time: the data order does not depend on workers
    split = tiny_config(recipe, tmp_path / "split", steps=steps)
    first = train(split, progress=False, stop_at=4)
    assert first.step == 4 and not first.completed
    assert state_io.load_latest(tmp_path / "split" / "checkpoints").step == 4
    resumed_cfg = tiny_config(recipe, tmp_path / "split", steps=steps, workers=1)
    second = train(resumed_cfg, resume=True, progress=False)
    assert second.completed and second.step == steps

    assert_same_state(tmp_path / "straight" / "checkpoints" / f"state-{steps:08d}.safetensors",
                      tmp_path / "split" / "checkpoints" / f"state-{steps:08d}.safetensors")
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == list(range(1, steps + 1))
    assert np.allclose([r["loss"] for r in read_metrics(tmp_path / "split")],
                       [r["loss"] for r in read_metrics(tmp_path / "straight")])


def write_yaml(cfg, path: Path) -> Path:
    data = cfg.to_dict()
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "ssl3d_ros.training.pretrain", "--no-progress", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_state(ckpt_dir: Path, min_step: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = state_io.list_states(ckpt_dir)
        if states and int(states[-1].name[6:14]) >= min_step:
            return int(states[-1].name[6:14])
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc {proc.returncode}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared in time")


def test_sigkill_then_resume_loses_at_most_one_interval(tmp_path):
    out = tmp_path / "run"
    steps, every = 40, 2
    config = write_yaml(tiny_config("mae", out, steps=steps, checkpoint_every=every), tmp_path / "mae.yaml")
    proc = run_cli(["--config", str(config)])
    seen = wait_for_state(out / "checkpoints", 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    logged = max(int(r["step"]) for r in read_metrics(out))
    latest = state_io.load_latest(out / "checkpoints")
    assert latest.step >= seen and logged - latest.step <= every  # at most one interval lost

    proc = run_cli(["--config", str(config), "--resume", "--steps", str(latest.step + 2)])
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resumed from" in stderr and (out / "encoder.safetensors").is_file()
    steps_logged = [int(r["step"]) for r in read_metrics(out)]
    assert steps_logged == list(range(1, latest.step + 3))  # one consistent history, no repeated steps


@pytest.mark.parametrize("to_group", [False, True], ids=["ctrl-c", "sigterm-to-the-process-group"])
def test_ctrl_c_saves_and_exits_cleanly(to_group, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the process), and SIGTERM to the whole process group (docker stop,
    systemd, ``pkill -f``), which reaches the DataLoader worker too: before the workers ignored SIGTERM,
    the killed worker ended the run with a traceback and no saved state."""
    out = tmp_path / "run"
    config = write_yaml(tiny_config("jepa", out, steps=200, checkpoint_every=50), tmp_path / "jepa.yaml")
    proc = run_cli(["--config", str(config), "--workers", "1"], start_new_session=to_group)
    deadline = time.time() + 240
    while not (out / "metrics.csv").is_file() or len(read_metrics(out)) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:] if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    if to_group:
        assert _group_size(proc.pid) >= 2, "no loader worker in the run's process group"
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    latest = state_io.load_latest(out / "checkpoints")
    assert latest is not None and latest.step == max(int(r["step"]) for r in read_metrics(out))
    assert "continue with --resume" in stderr
    assert not (out / "encoder.safetensors").exists()


def _group_size(pgid: int) -> int:
    """Live processes in process group ``pgid`` (from /proc: the run and its loader workers)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        count += int(fields[2]) == pgid  # after the name: state, ppid, pgrp
    return count


def test_bad_scans_are_skipped_and_counted(tmp_path):
    from ssl3d_ros.sim import simulate_sequence, SimConfig, with_lidar

    data = tmp_path / "scans"
    data.mkdir()
    for k, scan in enumerate(simulate_sequence(with_lidar(SimConfig(), beams=16, columns=256), 4, seed=1)):
        np.save(data / f"{k:06d}.npy", np.c_[scan.points, scan.fields["intensity"]].astype(np.float32))
    (data / "000004.npy").write_bytes(b"\x93NUMPY garbage")  # a truncated / corrupt file
    np.save(data / "000005.npy", np.zeros((3, 2), np.float32))  # wrong shape
    cfg = tiny_config("mae", tmp_path / "run", steps=4, sources=[str(data)])
    result = train(cfg, progress=False)
    assert result.completed
    # 6 scans, 2 unreadable: 8 samples over 4 steps meet each bad file at least once
    assert result.scans_skipped >= 2
    assert read_metrics(tmp_path / "run")[-1]["scans_skipped"] == result.scans_skipped
    listed = (tmp_path / "run" / "skipped_scans.tsv").read_text().splitlines()
    assert len(listed) == result.scans_skipped
    assert {line.split("\t")[2] for line in listed} == {str(data / "000004.npy"), str(data / "000005.npy")}
    # a fresh run never mixes its checkpoints with an earlier run's
    from ssl3d_ros.config import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, progress=False)
    with pytest.raises(ConfigError, match="another model: .*recipe.name: 'mae' -> 'jepa'"):
        train(tiny_config("jepa", tmp_path / "run", steps=4, sources=[str(data)]), resume=True, progress=False)
    # another input (a different stem) is named, not reported as a state-dict size mismatch
    more_features = tiny_config("mae", tmp_path / "run", steps=4, sources=[str(data)])
    more_features.preprocessing.features = (*more_features.preprocessing.features, "constant")
    with pytest.raises(ConfigError, match=r"preprocessing.features: \[.*\] -> \[.*'constant'\]"):
        train(more_features, resume=True, progress=False)
    # what may change on resume: the data, the optimiser, the run length
    longer = tiny_config("mae", tmp_path / "run", steps=6, sources=[str(data)])
    longer.optim.lr = 1e-3
    assert train(longer, resume=True, progress=False).step == 6


def test_resume_accepts_config_keys_added_since_with_their_defaults():
    """A state written before a config key existed (here the views' range_equalise, added later) still
    resumes when the key holds its default now, which keeps the old behaviour; turning the new option
    on, or changing an old key, is still refused as another model."""
    import json

    from ssl3d_ros.training.config import load_config
    from ssl3d_ros.training.loop import model_config_changes

    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "config" / "pretrain" / "sonata.yaml")
    saved = json.loads(json.dumps(cfg.to_dict()))
    for group in ("global", "local"):
        for key in ("range_equalise", "range_equalise_range"):
            del saved["recipe"]["views"][group]["augment"][key]
    assert model_config_changes(saved, cfg) == []
    on = load_config(repo / "config" / "pretrain" / "sonata.yaml", ["recipe.views.local.augment.range_equalise=0.5"])
    assert model_config_changes(saved, on) == ["recipe.views.local.augment.range_equalise: None -> 0.5"]
    wider = load_config(repo / "config" / "pretrain" / "sonata.yaml", ["recipe.prototypes=128"])
    assert model_config_changes(saved, wider) == ["recipe.prototypes: 256 -> 128"]
