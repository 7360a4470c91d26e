"""The selection study (``python -m ssl3d_ros.training.study.selection_study``) end to end on the
simulator: two labelled sequences to choose from, a third to test on; diversity, random and mix (mix
ranks by a head) choose two scans each, each choice is fine-tuned and scored; the report pairs every
strategy with random by seed, the plot exists, a second run computes nothing, and bad input is one
line with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders import make_checkpoint, simulated_sequences

REPO = Path(__file__).resolve().parent.parent
MODULE = "ssl3d_ros.training.study.selection_study"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("selection_study")
    sequences = simulated_sequences(root, {"00": 4, "01": 5, "08": 6}, scans=2)
    return {"sequences": sequences,
            "encoder": make_checkpoint(root / "encoder.safetensors", with_head=False, with_pca=False),
            "head": make_checkpoint(root / "head.safetensors", with_head=True, with_pca=False)}


def run(out: Path, setup: dict, *args: str) -> subprocess.CompletedProcess:
    seq = setup["sequences"]
    cmd = [sys.executable, "-m", MODULE, "--out", str(out), "--pool", seq["00"], seq["01"], "--test", seq["08"],
           "--class-map", "sim-outdoor", "--checkpoint", str(setup["encoder"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def test_selection_study_runs_every_cell_and_reports_gains_over_random(tmp_path, setup):
    out = tmp_path / "study"
    args = ("--strategies", "diversity", "random", "mix", "--head", str(setup["head"]), "--budgets", "2",
            "--seeds", "0", "--steps", "2", "--set", "augment.crop_points=3000", "--set", "run.workers=0")
    first = run(out, setup, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    cells = json.loads((out / "selection.json").read_text())["cells"]
    assert sorted(c["strategy"] for c in cells) == ["diversity", "mix", "random"]
    pool = {str(p) for s in ("00", "01") for p in Path(setup["sequences"][s]).glob("*.npy") if not p.name.endswith(".labels.npy")}
    for cell in cells:
        assert cell["budget"] == 2 and len(cell["scans"]) == 2 and set(cell["scans"]) <= pool, cell["scans"]
        assert 0.0 <= cell["miou"] <= 1.0 and cell["steps"] == 2
        assert cell["classes_labelled"] and set(cell["sequences"]) <= {"00", "01"}
        # each fine-tune trained on exactly the scans its selection chose
        plan = json.loads((out / "finetune" / f"{cell['strategy']}-k2-s0" / "study.json").read_text())["plan"]
        assert sorted(plan["train"]) == sorted(cell["scans"])
    by = {c["strategy"]: c for c in cells}
    report = (out / "selection.md").read_text()
    gain = 100 * (by["diversity"]["miou"] - by["random"]["miou"])
    diversity_row = next(line for line in report.splitlines() if line.startswith("| diversity | 2 |"))
    assert f"{gain:+.1f}" in diversity_row
    random_row = next(line for line in report.splitlines() if line.startswith("| random | 2 |"))
    assert "| – | – |" in random_row  # random is the baseline: no gain over itself
    assert (out / "selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second run finds every selection and fine-tune done and computes nothing
    stamps = {p: p.stat().st_mtime_ns for p in (out / "finetune").rglob("cells/*.json")}
    again = run(out, setup, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "finetune").rglob("cells/*.json")} == stamps and len(stamps) == 3
    assert json.loads((out / "selection.json").read_text())["cells"] == cells
    (out / "selection.md").unlink()
    only = subprocess.run([sys.executable, "-m", MODULE, "--out", str(out), "--report-only"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert only.returncode == 0 and (out / "selection.md").read_text() == report, only.stderr[-2000:]


def test_selection_study_refuses_bad_input_in_one_line(tmp_path, setup):
    refused = run(tmp_path / "study", setup, "--strategies", "uncertainty", "--budgets", "2")
    assert refused.returncode == 2 and "--head" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    empty = subprocess.run([sys.executable, "-m", MODULE, "--out", str(tmp_path / "none"), "--report-only"],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert empty.returncode == 2 and "no finished cell" in empty.stderr and "Traceback" not in empty.stderr


def test_report_pairs_gains_by_seed_and_gives_their_spread():
    from ssl3d_ros.training.study.selection_study import report

    def cell(strategy, seed, miou):
        return {"strategy": strategy, "budget": 5, "seed": seed, "miou": miou, "steps": 100,
                "sequences": ["00", "01"], "classes_labelled": [1, 2, 3], "scans": ["/d/00/velodyne/000002.bin"]}

    records = [cell("random", 0, 0.10), cell("random", 1, 0.20), cell("diversity", 0, 0.13), cell("diversity", 1, 0.21)]
    diversity_row = next(line for line in report(records).splitlines() if line.startswith("| diversity | 5 |"))
    # gains are paired by seed (+3.0, +1.0), not the difference of the means over unpaired seeds
    assert "| +3.0, +1.0 | +2.0 ± 1.4 |" in diversity_row
    random_row = next(line for line in report(records).splitlines() if line.startswith("| random | 5 |"))
    assert "15.0 ± 7.1" in random_row and "| – | – |" in random_row
