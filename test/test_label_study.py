"""``ssl3d-study`` end to end on the simulator: two labelled sequences (folders of .npy scans written by
ssl3d-simulate), a third as the test sequence, scratch against an encoder the study pretrains itself,
two label budgets and a K-scans-per-sequence budget, one seed; the report and plot hold the cells
asked for, a second run computes nothing, and bad input is one line with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from builders import simulated_sequences

REPO = Path(__file__).resolve().parent.parent
TINY_PRETRAIN = [  # a few seconds of pretraining: the pipeline, not the result, is under test
    "preprocessing.voxel_size=0.25", "preprocessing.max_range=30.0", "recipe.prototypes=16", "recipe.head_hidden=32",
    "recipe.head_bottleneck=16", "recipe.views.global.crop_points=800", "recipe.views.local.crop_points=300",
    "run.batch_size=1", "run.workers=0", "run.checkpoint_every=2", "run.tensorboard=false", "data.sim_count=2"]


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> dict[str, str]:
    return simulated_sequences(tmp_path_factory.mktemp("sequences"), {"00": 1, "01": 2, "08": 3}, scans=2)


def study(out: Path, sequences: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    pretrain_row = "tiny=pretrain:" + ";".join([str(REPO / "config" / "pretrain" / "sonata.yaml"), *TINY_PRETRAIN])
    cmd = [sys.executable, "-m", "ssl3d_ros.training.study", "--out", str(out),
           "--train", sequences["00"], sequences["01"], "--test", sequences["08"], "--class-map", "sim-outdoor",
           # the folder of all three sequences, the test one left out as a user leaves it out of pretraining
           "--unlabelled", str(Path(sequences["00"]).parent), "--exclude", "*/08/*", "--pretrain-steps", "2",
           "--rows", "scratch", pretrain_row, "--fractions", "0.1", "1", "--scans-per-sequence", "1",
           "--seeds", "0", "--modes", "finetune", "probe", "--steps", "3",
           "--set", "augment.crop_points=3000", "--set", "run.workers=0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def test_study_runs_every_cell_and_writes_report_and_plot(tmp_path, sequences):
    out = tmp_path / "study"
    run = study(out, sequences)
    assert run.returncode == 0, run.stderr[-3000:]
    cells = json.loads((out / "study.json").read_text())["cells"]
    # 2 rows x 2 modes x 3 budgets x 1 seed, each scored on the test sequence
    assert len(cells) == 12 and all(c["miou"] is not None for c in cells)
    assert {(c["row"], c["mode"]) for c in cells} == {(r, m) for r in ("scratch", "tiny") for m in ("finetune", "probe")}
    assert {(c["fraction"], c["scans_per_source"]) for c in cells} == {(0.1, 0), (1.0, 0), (1.0, 1)}
    # the K-scans budget trains on one scan of each of the two sequences; 10 % uses fewer labels than 100 %
    by = {(c["row"], c["mode"], c["fraction"], c["scans_per_source"]): c for c in cells}
    assert by[("scratch", "finetune", 1.0, 1)]["scans_used"] == 2 and by[("scratch", "finetune", 1.0, 0)]["scans_used"] == 4
    assert by[("tiny", "finetune", 0.1, 0)]["selected_points"] < 0.15 * by[("tiny", "finetune", 1.0, 0)]["selected_points"]
    # scratch is the pretrained row's network with fresh weights
    assert by[("scratch", "probe", 0.1, 0)]["random_weights"] and not by[("tiny", "probe", 0.1, 0)]["random_weights"]
    assert by[("tiny", "probe", 0.1, 0)]["init"] == str(out / "pretrain" / "tiny" / "encoder.safetensors")
    report = (out / "study.md").read_text()
    for heading in ("Test mIoU (%)", "Gain over scratch", "Classes reached", "Per-class test IoU"):
        assert heading in report
    for label in ("10 %", "100 %", "1 scan per sequence", "scratch (fine-tuned)", "tiny (linear probe, frozen)"):
        assert label in report
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # everything is cached: the same command runs no cell again
    again = study(out, sequences)
    assert again.returncode == 0 and again.stdout.count("test mIoU") == 12
    assert json.loads((out / "study.json").read_text())["cells"] == cells
    # --report-only rebuilds the same report from the cached cells and the plan study.json keeps
    written = (out / "study.md").read_text()
    only = subprocess.run([sys.executable, "-m", "ssl3d_ros.training.study", "--out", str(out), "--report-only"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert only.returncode == 0 and (out / "study.md").read_text() == written and "- train: " in written


def test_study_refuses_a_test_set_it_would_train_on(tmp_path, sequences):
    run = study(tmp_path / "bad", sequences, "--val", sequences["08"])
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--val and --test share" in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "bad" / "cells").exists()


def test_study_refuses_to_pretrain_on_the_test_set(tmp_path, sequences):
    run = study(tmp_path / "bad", sequences, "--exclude", "*/nothing/*")
    assert run.returncode == 2 and "--unlabelled and --test share 2 scan(s)" in run.stderr, run.stderr
    assert run.stderr.strip().count("\n") == 0


def test_study_bad_rows_are_one_line(tmp_path, sequences):
    run = study(tmp_path / "bad", sequences, "--rows", "scratch", "x=missing.safetensors")
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "checkpoint missing.safetensors not found" in run.stderr


def test_lpft_cells_continue_their_probe_cells_at_a_lower_rate(tmp_path, sequences):
    """--modes lpft: each cell starts from its probe cell's model (encoder and trained head; the probe
    cell runs first and is cached as a cell of its own), trains every weight for --lpft-steps at
    --lpft-lr-scale times the rate, and its gain is read against scratch fine-tuned."""
    out = tmp_path / "study"
    run = study(out, sequences, "--modes", "finetune", "lpft", "--lpft-steps", "2", "--lpft-lr-scale", "0.25")
    assert run.returncode == 0, run.stderr[-3000:]
    cells = {(c["row"], c["mode"], c["fraction"], c["scans_per_source"]): c
             for c in json.loads((out / "study.json").read_text())["cells"]}
    assert {m for _, m, _, _ in cells} == {"finetune", "lpft"}  # the plan's cells; the probes are cached beside them
    probe_key, lpft_key = "tiny__probe__p0.1__s0", "tiny__lpft__p0.1__s0"
    assert (out / "cells" / f"{probe_key}.json").is_file()
    lpft = cells[("tiny", "lpft", 0.1, 0)]
    assert lpft["lpft"] == {"probe_steps": 3, "steps": 2, "lr": pytest.approx(0.25 * 0.002)}
    with safe_open(str(out / "runs" / lpft_key / "model.safetensors"), "pt") as f:  # the config it trained with
        stage = json.loads(f.metadata()["ssl3d"])["recipe"]["config"]
    assert stage["init"] == str(out / "runs" / probe_key / "model.safetensors") and stage["init_head"] is True
    assert stage["optim"]["freeze_encoder_steps"] == 0 and stage["optim"]["lr"] == pytest.approx(0.0005)
    assert stage["run"]["steps"] == 2
    # the same labels as the probe it continues; the encoder moved (the probe's did not)
    probe = json.loads((out / "cells" / f"{probe_key}.json").read_text())
    assert lpft["selected_points"] == probe["selected_points"]
    weights = {name: load_file(str(out / "runs" / key / "model.safetensors"))
               for name, key in (("probe", probe_key), ("lpft", lpft_key))}
    encoder = [k for k in weights["lpft"] if k.startswith("encoder.")]
    assert encoder and any(not torch.equal(weights["lpft"][k], weights["probe"][k]) for k in encoder)
    report = (out / "study.md").read_text()
    assert "| tiny (probe, then fine-tuned (LP-FT) vs scratch fine-tuned) |" in report
    assert "- LP-FT: each probe cell's model, then 2 steps end to end at 0.25 x the learning rates" in report

    # a probe cell whose model is gone cannot be continued: one line, exit 2
    (out / "runs" / "scratch__probe__p1__s0" / "model.safetensors").unlink()
    (out / "cells" / "scratch__lpft__p1__s0.json").unlink()
    again = study(out, sequences, "--modes", "finetune", "lpft", "--lpft-steps", "2", "--lpft-lr-scale", "0.25")
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0, again.stderr[-3000:]
    assert "the model of probe cell scratch__probe__p1__s0, which lpft cell scratch__lpft__p1__s0 continues, is gone" \
        in again.stderr
