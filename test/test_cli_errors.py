"""The console scripts' error contract (ssl3d_ros.cli): bad input gives one line on stderr naming the
file and the problem, exit 2, and never a traceback; --help lists the exit codes.

The scripts run as subprocesses (``python -m``, as the console-script wrappers do) on real bad files
written to tmp_path; each fails on its input before any training or inference starts.
"""
from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssl3d_ros import cli

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = ["-m", "ssl3d_ros.training.pretrain", "--config", str(REPO / "config" / "pretrain" / "sonata.yaml"),
            "--steps", "1", "--no-progress"]


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=280)


def assert_one_error_line(result: subprocess.CompletedProcess, prog: str, names: Path | str) -> str:
    """rc 2, no traceback, and exactly one line ``PROG: error: ...`` naming ``names``; it is the last
    line. Log records of skipped scans (the project's counted skips) may come before it."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    assert errors[0].startswith(f"{prog}: error: ") and str(names) in errors[0], errors[0]
    return errors[0]


def labelled_npy_scan(folder: Path, points: int = 64, labels: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    scan = folder / "000000.points.npy"
    np.save(scan, rng.uniform(-10, 10, (points, 4)).astype(np.float32))
    np.save(folder / "000000.labels.npy", np.ones(labels, dtype=np.int32))
    return scan


def pickle_checkpoint(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}, "epoch": 3}))
    return path


# ------------------------------------------------------------------------------------ ssl3d-pretrain


@pytest.mark.parametrize("size", [0, 100])
def test_pretrain_on_a_tiny_mcap_is_one_line(tmp_path, size):
    bag = tmp_path / f"cut{size}.mcap"
    bag.write_bytes(bytes(range(256))[:size])
    result = run_script(PRETRAIN + ["--data", str(bag), "--out", str(tmp_path / "run")], tmp_path)
    assert_one_error_line(result, "ssl3d-pretrain", bag)
    # stderr holds nothing but the error: the data is opened before the model is built
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_pretrain_output_opens_with_no_torch_internals_warning(tmp_path):
    """torch 2.13 logs a warning about ``is_fx_tracing`` when the model is built; a command's output
    must start with the run, not with torch's internals (issue 27). Checked on a real 1-step run."""
    result = run_script([*PRETRAIN, "--out", str(tmp_path / "run"), "--set", "run.workers=0",
                         "--set", "data.sim_count=2"], REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is_fx_tracing" not in result.stderr + result.stdout


def test_pretrain_on_an_empty_folder_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_script(PRETRAIN + ["--data", str(empty), "--out", str(tmp_path / "run")], tmp_path)
    line = assert_one_error_line(result, "ssl3d-pretrain", empty)
    assert "no scan files" in line and len(result.stderr.strip().splitlines()) == 1


def test_pretrain_on_a_missing_path_is_one_line(tmp_path):
    missing = tmp_path / "not here"
    result = run_script(PRETRAIN + ["--data", str(missing), "--out", str(tmp_path / "run")], tmp_path)
    assert "no such scan file" in assert_one_error_line(result, "ssl3d-pretrain", missing)


def test_pretrain_on_a_folder_of_unusable_scans_is_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "000000.bin").write_bytes(b"\x00" * 7)  # not whole float32 x 4 records
    (bad / "000001.bin").write_bytes(b"")  # a KITTI file with no points
    (bad / "cloud.pcd").write_text("not a pcd header\n")
    result = run_script(PRETRAIN + ["--data", str(bad), "--out", str(tmp_path / "run")], tmp_path)
    line = assert_one_error_line(result, "ssl3d-pretrain", bad)
    assert "consecutive scans were unusable" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before the first step


def test_pretrain_with_an_unknown_config_key_is_one_line(tmp_path):
    result = run_script(PRETRAIN + ["--data", "sim:outdoor:1", "--set", "run.no_such_key=1",
                                    "--out", str(tmp_path / "run")], tmp_path)
    assert "unknown key" in assert_one_error_line(result, "ssl3d-pretrain", "no_such_key")


# ------------------------------------------------------------------------------- the other scripts


def test_probe_with_a_label_file_of_the_wrong_length_is_one_line(tmp_path):
    labelled_npy_scan(tmp_path / "scans", points=64, labels=10)
    result = run_script(["-m", "ssl3d_ros.evaluation.probe", "--checkpoint", str(tmp_path / "unused.safetensors"),
                         str(tmp_path / "scans"), "--class-map", "semantickitti", "--out", str(tmp_path / "report")],
                        tmp_path)
    line = assert_one_error_line(result, "ssl3d-probe", tmp_path / "scans" / "000000.labels.npy")
    assert "(10,)" in line and "64 points" in line


def test_probe_refuses_a_pickle_checkpoint_in_one_line(tmp_path):
    labelled_npy_scan(tmp_path / "scans")
    ckpt = pickle_checkpoint(tmp_path / "model.safetensors")
    result = run_script(["-m", "ssl3d_ros.evaluation.probe", "--checkpoint", str(ckpt), str(tmp_path / "scans"),
                         "--class-map", "semantickitti", "--out", str(tmp_path / "report")], tmp_path)
    assert_one_error_line(result, "ssl3d-probe", ckpt)
    assert not (tmp_path / "report").exists()


def test_a_training_state_given_as_a_checkpoint_names_the_file_to_use(tmp_path, capsys):
    """OUT/checkpoints/state-*.safetensors passed to --checkpoint / --init: recognised as a resumable
    training state, one line naming what to use instead (the run's export when it exists), exit 2."""
    import torch

    from ssl3d_ros.training import state as state_io
    from ssl3d_ros.training.finetune import main as finetune_main

    run = tmp_path / "run"
    layer = torch.nn.Linear(2, 2)
    state = state_io.save_state(run / "checkpoints", 4, layer.state_dict(),
                                torch.optim.AdamW(layer.parameters()).state_dict(), {"counters": {}})
    labelled_npy_scan(tmp_path / "scans")
    result = run_script(["-m", "ssl3d_ros.evaluation.probe", "--checkpoint", str(state), str(tmp_path / "scans"),
                         "--class-map", "semantickitti", "--out", str(tmp_path / "report")], tmp_path)
    line = assert_one_error_line(result, "ssl3d-probe", state)
    assert "resumable training state" in line and "encoder.safetensors" in line and "model.safetensors" in line
    assert "--resume" in line and not (tmp_path / "report").exists()
    (run / "encoder.safetensors").write_bytes(b"")  # the pretraining run finished: its export is named
    assert finetune_main(["--init", str(state), "--data", "sim:outdoor:1", "--out", str(tmp_path / "ft"),
                          "--steps", "1", "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ssl3d-finetune:")]
    assert len(errors) == 1 and f"use {run / 'encoder.safetensors'}" in errors[0], errors


def test_novelty_ref_refuses_a_pickle_and_data_that_cannot_calibrate_in_one_line(tmp_path):
    ckpt = pickle_checkpoint(tmp_path / "model.safetensors")
    novelty_ref = ["-m", "ssl3d_ros.training.novelty", "--data", "sim:outdoor:2", "--out", str(tmp_path / "out.safetensors")]
    result = run_script([*novelty_ref, "--checkpoint", str(ckpt)], tmp_path)
    assert_one_error_line(result, "ssl3d-novelty-ref", ckpt)
    # one scan cannot say what varies from frame to frame: refused, nothing written
    from builders import make_checkpoint

    good = make_checkpoint(tmp_path / "good.safetensors")
    one = tmp_path / "one"
    labelled_npy_scan(one, points=400, labels=400)
    result = run_script([*novelty_ref[:2], "--checkpoint", str(good), "--data", str(one), "--out",
                         str(tmp_path / "out.safetensors")], tmp_path)
    assert "at least 2 frames" in assert_one_error_line(result, "ssl3d-novelty-ref", "")
    assert not (tmp_path / "out.safetensors").exists()


def test_audit_refuses_a_pickle_checkpoint_in_one_line(tmp_path):
    labelled_npy_scan(tmp_path / "scans")
    ckpt = pickle_checkpoint(tmp_path / "model.ckpt")
    result = run_script(["-m", "ssl3d_ros.evaluation.audit", str(tmp_path / "scans"), "--checkpoint", str(ckpt),
                         "--no-baselines", "--out", str(tmp_path / "audit")], tmp_path)
    assert_one_error_line(result, "ssl3d-audit", ckpt)


def test_replay_of_an_empty_mcap_is_one_line(tmp_path):
    bag = tmp_path / "empty.mcap"
    bag.write_bytes(b"")
    result = run_script(["-m", "ssl3d_ros.evaluation.replay", str(bag), "--offline", "--out", str(tmp_path / "r")],
                        tmp_path)
    assert_one_error_line(result, "ssl3d-replay", bag)


def test_viz_of_a_truncated_scan_is_one_line(tmp_path):
    scan = tmp_path / "000000.bin"
    scan.write_bytes(b"\x00" * 10)
    result = run_script(["-m", "ssl3d_ros.evaluation.viz", str(scan), "--out", str(tmp_path / "pictures")], tmp_path)
    assert "multiple of the 16-byte record" in assert_one_error_line(result, "ssl3d-viz", scan)


SELECT = ["-m", "ssl3d_ros.evaluation.selection", "--no-progress"]


def kitti_scans(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        rng.uniform(-10, 10, (500, 4)).astype(np.float32).tofile(folder / f"{k:06d}.bin")
    return folder


def test_select_of_a_missing_input_is_one_line(tmp_path):
    missing = tmp_path / "no bag here"
    result = run_script(SELECT + [str(missing), "--budget", "3", "--out", str(tmp_path / "sel")], tmp_path)
    assert "no such scan file" in assert_one_error_line(result, "ssl3d-select", missing)
    assert not (tmp_path / "sel").exists()


@pytest.mark.parametrize("budget", ["0", "-2"])
def test_select_with_a_budget_below_one_is_one_line(tmp_path, budget):
    scans = kitti_scans(tmp_path / "scans")
    result = run_script(SELECT + [str(scans), "--budget", budget, "--out", str(tmp_path / "sel")], tmp_path)
    assert "at least 1" in assert_one_error_line(result, "ssl3d-select", "--budget")


def test_select_by_uncertainty_without_a_segmentation_head_is_one_line(tmp_path):
    from builders import make_checkpoint

    scans = kitti_scans(tmp_path / "scans")
    ckpt = make_checkpoint(tmp_path / "encoder.safetensors", with_head=False, with_pca=False)
    for strategy in ("uncertainty", "mix"):
        result = run_script(SELECT + [str(scans), "--checkpoint", str(ckpt), "--budget", "1", "--strategy", strategy,
                                      "--out", str(tmp_path / "sel")], tmp_path)
        line = assert_one_error_line(result, "ssl3d-select", ckpt)
        assert "no segmentation head" in line and f"--strategy {strategy}" in line
        assert not (tmp_path / "sel").exists()  # refused before any scan was encoded


def test_select_of_unreadable_scans_is_one_line(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "000000.bin").write_bytes(b"\x00" * 10)  # not whole 16-byte records
    (scans / "000001.bin").write_bytes(b"\x00" * 7)
    result = run_script(SELECT + [str(scans), "--budget", "1", "--out", str(tmp_path / "sel")], tmp_path)
    line = assert_one_error_line(result, "ssl3d-select", scans)
    assert "none of the 2 scans could be used" in line and "multiple of the 16-byte record" in line


def test_select_refuses_a_pickle_checkpoint_in_one_line(tmp_path):
    ckpt = pickle_checkpoint(tmp_path / "model.safetensors")
    result = run_script(SELECT + [str(kitti_scans(tmp_path / "scans")), "--checkpoint", str(ckpt), "--budget", "1",
                                  "--out", str(tmp_path / "sel")], tmp_path)
    assert_one_error_line(result, "ssl3d-select", ckpt)


def test_simulate_with_an_unknown_config_key_is_one_line(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("scene: outdoor\nno_such_key: 3\n")
    result = run_script(["-m", "ssl3d_ros.sim.cli", "--config", str(config), "--npy-dir", str(tmp_path / "npy")],
                        tmp_path)
    assert "no_such_key" in assert_one_error_line(result, "ssl3d-simulate", config)


def test_demo_with_a_file_as_its_output_folder_is_one_line(tmp_path):
    out = tmp_path / "a file"
    out.write_text("not a folder")
    result = run_script(["-m", "ssl3d_ros.demo", "--out", str(out)], tmp_path)
    assert_one_error_line(result, "ssl3d-demo", out)


# --------------------------------------------------------------------------------- --help, run_main


def _parsers():
    from ssl3d_ros.demo import main as demo_main
    from ssl3d_ros.evaluation import audit, probe, replay, selection, viz
    from ssl3d_ros.sim import cli as sim_cli
    from ssl3d_ros.training import novelty, pretrain, study

    return {
        "ssl3d-novelty-ref": lambda: novelty.main(["--help"]),
        "ssl3d-study": lambda: study.main(["--help"]),
        "ssl3d-pretrain": lambda: pretrain.parse_args(["--help"]),
        "ssl3d-probe": lambda: probe.main(["--help"]),
        "ssl3d-replay": lambda: replay.main(["--help"]),
        "ssl3d-viz": lambda: viz.main(["--help"]),
        "ssl3d-audit": lambda: audit.main(["--help"]),
        "ssl3d-select": lambda: selection.main(["--help"]),
        "ssl3d-simulate": lambda: sim_cli.main(["--help"]),
        "ssl3d-demo": lambda: demo_main(["--help"]),
    }


@pytest.mark.parametrize("prog", sorted(_parsers()))
def test_help_lists_the_exit_codes(prog, capsys):
    with pytest.raises(SystemExit) as exc:
        _parsers()[prog]()
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {prog}")
    assert "exit status:" in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in text, (code, text)


def _raises(exc: BaseException):
    def main(argv):
        raise exc

    return main


def test_run_main_maps_each_kind_of_failure_to_its_exit_status(capsys):
    from ssl3d_ros.config import ConfigError
    from ssl3d_ros.io import ScanReadError

    assert cli.run_main("prog", lambda argv: None) == 0
    assert cli.run_main("prog", lambda argv: 3) == 3
    assert cli.run_main("prog", _raises(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "prog: interrupted\n"
    assert cli.run_main("prog", _raises(ScanReadError("/d/x.bin", "size 7 bytes\nis odd"))) == 2
    assert capsys.readouterr().err == "prog: error: /d/x.bin: size 7 bytes; is odd\n"
    assert cli.run_main("prog", _raises(ConfigError("run.steps: must be >= 1"))) == 2
    assert capsys.readouterr().err == "prog: error: run.steps: must be >= 1\n"
    assert cli.run_main("prog", _raises(PermissionError(errno.EACCES, "Permission denied", "/ro/out"))) == 2
    assert capsys.readouterr().err == "prog: error: /ro/out: Permission denied\n"
    assert cli.run_main("prog", _raises(SystemExit("prog: --label-field needs --class-map"))) == 2
    assert capsys.readouterr().err == "prog: error: --label-field needs --class-map\n"
    # an output that cannot be written is not the user's input: exit 1, still one line
    assert cli.run_main("prog", _raises(OSError(errno.ENOSPC, "/o/r.json: No space left on device"))) == 1
    assert capsys.readouterr().err == "prog: error: /o/r.json: No space left on device\n"


def test_run_main_lets_bugs_show_their_traceback():
    with pytest.raises(ZeroDivisionError):
        cli.run_main("prog", lambda argv: 1 / 0)
    with pytest.raises(ValueError):  # a plain ValueError is not one of the project's input errors
        cli.run_main("prog", _raises(ValueError("internal")))
    with pytest.raises(SystemExit) as exc:  # argparse's own statuses pass through
        cli.run_main("prog", _raises(SystemExit(2)))
    assert exc.value.code == 2
