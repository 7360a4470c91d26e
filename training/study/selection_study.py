"""The selection study: does choosing which scans to label (``ssl3d-select``) beat picking them at
random, on your data?

For every budget K, strategy and seed, ``ssl3d-select`` chooses K scans of the pool, the encoder is
fine-tuned on all labels of those scans (one ``ssl3d-study`` cell: every label of the chosen scans, the
same steps for every cell) and scored once on the test scans. The selection and the fine-tune of a
cell are folders under OUT (``select/KEY``, ``finetune/KEY``, KEY = ``STRATEGY-kK-sSEED``), so a
stopped study continues where it stopped and adding budgets, strategies or seeds computes only what is
missing. OUT/selection.md holds the table (test mIoU per seed, mean ± std, the gain over ``random``
paired by seed, the sequences and classes the chosen scans cover), OUT/selection.png the plot (test
mIoU against K, one line per strategy with its spread), OUT/selection.json every cell.

    python -m ssl3d_ros.training.study.selection_study --out runs/select-study \\
        --pool SEQ/00 SEQ/01 SEQ/02 SEQ/03 SEQ/04 SEQ/05 SEQ/07 --test SEQ/08 --class-map semantickitti \\
        --checkpoint runs/sonata/encoder.safetensors --strategies diversity random uniform-time \\
        --budgets 3 5 10 --seeds 0 1 2 --steps 4000 --set augment.crop=ball --set augment.crop_points=20000
    python -m ssl3d_ros.training.study.selection_study --out runs/select-study --report-only

``uncertainty`` and ``mix`` rank scans by a segmentation head's entropy: give ``--head`` a node
checkpoint (``{seed}`` in the path is replaced by the cell's seed, e.g. the 1 % fine-tunes of
``ssl3d-study``: a team that labelled a few clicks asks which scans to label fully next). The
fine-tune always starts from ``--checkpoint``, so only the choice of scans differs between strategies.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ssl3d_ros.atomic import atomic_write, atomic_write_json
from ssl3d_ros.cli import EXIT_CODES_EPILOG, EXIT_OK, console_script
from ssl3d_ros.config import ConfigError
from ssl3d_ros.evaluation.selection import STRATEGIES, UNCERTAINTY_STRATEGIES

from .report import save_miou_plot

PROG = "selection_study"
BASELINE = "random"
LABELLED_POINTS = 100  # a class counts as labelled in a selection from this many points of it on


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m ssl3d_ros.training.study.{PROG}", description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="study folder (select/, finetune/, selection.md/.json/.png)")
    p.add_argument("--pool", nargs="+", default=[], metavar="PATH",
                   help="labelled scans to choose from: sequence folders (KITTI velodyne/ + labels/) or scan files")
    p.add_argument("--test", nargs="+", default=[], metavar="PATH", help="labelled test scans, scored once per cell")
    p.add_argument("--class-map", default="", help="class map of the labels (e.g. semantickitti; see ssl3d-study)")
    p.add_argument("--checkpoint", default="", help="encoder (or node checkpoint) that chooses and is fine-tuned")
    p.add_argument("--head", default="", help="node checkpoint with a segmentation head for uncertainty and mix "
                   "({seed} is replaced by the cell's seed)")
    p.add_argument("--strategies", nargs="+", default=["diversity", BASELINE, "uniform-time"], choices=STRATEGIES)
    p.add_argument("--budgets", nargs="+", type=int, default=[5], metavar="K", help="scans to label (default 5)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the selection and of the fine-tune")
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning steps of every cell")
    p.add_argument("--val-every", type=int, default=0, help="steps between validations (ssl3d-study's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="fine-tuning config override of every cell (ssl3d-study --set)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the selections (default 1)")
    p.add_argument("--report-only", action="store_true", help="only write the report from the finished cells")
    return p


def cell_key(strategy: str, budget: int, seed: int) -> str:
    return f"{strategy}-k{budget}-s{seed}"


def check_arguments(args: argparse.Namespace) -> None:
    if args.report_only:
        return
    for flag, value in (("--pool", args.pool), ("--test", args.test), ("--checkpoint", args.checkpoint)):
        if not value:
            raise ConfigError(f"{flag} is required (or --report-only)")
    if not args.class_map and not all(p.startswith("sim:") for p in args.pool):
        raise ConfigError("--class-map is required for recorded data (e.g. semantickitti)")
    if any(k < 1 for k in args.budgets):
        raise ConfigError(f"--budgets must be at least 1, got {args.budgets}")
    if not args.head and any(s in UNCERTAINTY_STRATEGIES for s in args.strategies):
        raise ConfigError(f"--strategies {' '.join(s for s in args.strategies if s in UNCERTAINTY_STRATEGIES)} rank scans "
                          "by a segmentation head: give --head (a node checkpoint, {seed} for one per seed)")


def chosen_scans(ranked_csv: Path) -> list[str]:
    """The chosen scan files of an ``ssl3d-select`` ranked list, in rank order."""
    with open(ranked_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    bag_rows = [r for r in rows if r["topic"]]
    if bag_rows:
        raise ConfigError(f"{ranked_csv}: chose messages of a bag ({bag_rows[0]['source']} {bag_rows[0]['topic']}); "
                          "the fine-tune trains on scan files: give the pool as labelled scan folders or files")
    return [r["source"] for r in rows]


def run_cell(args: argparse.Namespace, strategy: str, budget: int, seed: int) -> int:
    """Select, then fine-tune; each step skipped when its output exists. Returns an exit status."""
    from ssl3d_ros.evaluation.selection import main as select_main

    from .cli import main as study_main

    key = cell_key(strategy, budget, seed)
    chosen_dir = args.out / "select" / key
    if not (chosen_dir / "ranked.csv").is_file():
        checkpoint = args.head.replace("{seed}", str(seed)) if strategy in UNCERTAINTY_STRATEGIES else args.checkpoint
        status = select_main.unwrapped([
            *args.pool, "--checkpoint", checkpoint, "--budget", str(budget), "--strategy", strategy, "--seed", str(seed),
            "--out", str(chosen_dir), "--cache", str(args.out / "select" / "cache"), "--threads", str(args.threads),
            "--no-progress", "--no-pictures"])
        if status != EXIT_OK:
            return status
    finetune = [
        "--out", str(args.out / "finetune" / key), "--train", *chosen_scans(chosen_dir / "ranked.csv"),
        "--test", *args.test, "--rows", f"{strategy}={args.checkpoint}", "--fractions", "1", "--seeds", str(seed),
        "--modes", "finetune", "--steps", str(args.steps), "--val-every", str(args.val_every),
        *(["--class-map", args.class_map] if args.class_map else []), *[f"--set={o}" for o in args.overrides]]
    return study_main.unwrapped(finetune)


def sequence_of(scan: str) -> str:
    """The sequence a scan file belongs to: its folder (the one above ``velodyne/`` in KITTI's layout)."""
    path = Path(scan)
    folder = path.parent.parent if path.parent.name == "velodyne" else path.parent
    return folder.name


def labelled_classes(scans: Sequence[str], class_map: str) -> list[str]:
    """Classes with at least LABELLED_POINTS points in the chosen scans' labels."""
    from ssl3d_ros.io import open_source
    from ssl3d_ros.labels import load_class_map

    names = load_class_map(class_map) if class_map else None
    counts: dict[str, int] = {}
    for scan_path in scans:
        scan = open_source(scan_path)[0]
        if scan.labels is None or names is None:
            continue
        classes = names.apply(scan.labels)
        for index, count in enumerate(np.bincount(classes[classes >= 0], minlength=names.num_classes)):
            counts[names.class_names[index]] = counts.get(names.class_names[index], 0) + int(count)
    return sorted(name for name, count in counts.items() if count >= LABELLED_POINTS)


def cell_record(out: Path, key: str, class_map: str) -> dict | None:
    """One finished cell (its selection and its fine-tune's test score), or None while unfinished."""
    ranked, study = out / "select" / key / "ranked.csv", out / "finetune" / key / "study.json"
    if not (ranked.is_file() and study.is_file()):
        return None
    cells = json.loads(study.read_text())["cells"]
    if not cells:
        return None
    strategy, budget, seed = key.rsplit("-", 2)
    scans = chosen_scans(ranked)
    return {"strategy": strategy, "budget": int(budget[1:]), "seed": int(seed[1:]), "scans": scans,
            "sequences": sorted({sequence_of(s) for s in scans}), "classes_labelled": labelled_classes(scans, class_map),
            "miou": cells[0]["miou"], "iou": cells[0]["iou"], "steps": cells[0]["steps"], "seconds": cells[0]["seconds"]}


def finished_cells(out: Path, class_map: str) -> list[dict]:
    keys = sorted(p.name for p in (out / "finetune").glob("*-k*-s*") if p.is_dir()) if (out / "finetune").is_dir() else []
    return [r for r in (cell_record(out, k, class_map) for k in keys) if r is not None]


def _mean_std(values: Sequence[float], signed: bool = False) -> str:
    number = "{:+.1f}" if signed else "{:.1f}"
    if len(values) == 1:
        return number.format(values[0])
    return f"{number.format(np.mean(values))} ± {np.std(values, ddof=1):.1f}"


def report(records: Sequence[dict]) -> str:
    """The markdown table: per strategy and budget, test mIoU, the paired gain over random, coverage."""
    strategies = list(dict.fromkeys(r["strategy"] for r in sorted(records, key=lambda r: r["strategy"] != BASELINE)))
    budgets = sorted({r["budget"] for r in records})
    by = {(r["strategy"], r["budget"], r["seed"]): r for r in records}
    lines = ["# Which scans to label: the selection study", "",
             f"Every cell: the chosen scans fine-tuned with all their labels, {records[0]['steps']} steps, scored once "
             "on the test scans. Gain: the strategy's mIoU minus random's with the same seed and budget.", "",
             "| strategy | K | test mIoU (%), per seed | mean ± std | gain over random, per seed | mean gain ± std | "
             "sequences covered | classes labelled |", "|---|---|---|---|---|---|---|---|"]
    for budget in budgets:
        for strategy in strategies:
            mine = sorted((r for r in records if (r["strategy"], r["budget"]) == (strategy, budget)), key=lambda r: r["seed"])
            if not mine:
                continue
            miou = [100 * r["miou"] for r in mine]
            gains = [100 * (r["miou"] - by[(BASELINE, budget, r["seed"])]["miou"])
                     for r in mine if strategy != BASELINE and (BASELINE, budget, r["seed"]) in by]
            lines.append(" | ".join([
                f"| {strategy}", str(budget), " / ".join(f"{v:.1f}" for v in miou) + f" (seed{'s' * (len(mine) > 1)} {', '.join(str(r['seed']) for r in mine)})",
                _mean_std(miou), ", ".join(f"{g:+.1f}" for g in gains) or "–", (_mean_std(gains, signed=True) if gains else "–"),
                _mean_std([len(r["sequences"]) for r in mine]), _mean_std([len(r["classes_labelled"]) for r in mine]) + " |"]))
    lines += ["", "| strategy | K | seed | chosen scans (rank order) | test mIoU (%) |", "|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["budget"], r["strategy"], r["seed"])):
        scans = ", ".join(f"{sequence_of(s)}/{Path(s).name.split('.')[0]}" for s in r["scans"])
        lines.append(f"| {r['strategy']} | {r['budget']} | {r['seed']} | {scans} | {100 * r['miou']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(records: Sequence[dict], path: Path) -> Path:
    """Test mIoU against K, one line per strategy (mean, ± std bars), each seed a faint dot."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a robot or in CI
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    strategies = sorted({r["strategy"] for r in records}, key=lambda s: (s != BASELINE, s))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for index, strategy in enumerate(strategies):
        colour = f"C{index % 10}"
        offset = (index - (len(strategies) - 1) / 2) * 0.03  # side by side where budgets coincide
        budgets = sorted({r["budget"] for r in records if r["strategy"] == strategy})
        means, stds = [], []
        for budget in budgets:
            values = [100 * r["miou"] for r in records if (r["strategy"], r["budget"]) == (strategy, budget)]
            means.append(float(np.mean(values)))
            stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
            ax.scatter([budget * (1 + offset)] * len(values), values, color=colour, alpha=0.35, s=12)
        ax.errorbar([b * (1 + offset) for b in budgets], means, yerr=stds, marker="o", capsize=3, color=colour,
                    linestyle="--" if strategy == BASELINE else "-", label=strategy)
    ax.set_xscale("log")
    budgets = sorted({r["budget"] for r in records})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # K only, not log-scale minor labels
    ax.set_xlim(budgets[0] / 1.3, budgets[-1] * 1.3)
    return save_miou_plot(fig, ax, path, f"test mIoU against the scans chosen to label ({records[0]['steps']} fine-tuning "
                          "steps)", "scans labelled (K, log scale)")


def write_outputs(out: Path, records: Sequence[dict], class_map: str) -> None:
    """selection.md, selection.json (with the class map, for --report-only) and selection.png."""
    text = report(records)
    atomic_write(out / "selection.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    atomic_write_json(out / "selection.json", {"class_map": class_map, "cells": list(records)})
    plot(records, out / "selection.png")


@console_script(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    check_arguments(args)
    if args.report_only:
        plan_file = args.out / "selection.json"
        class_map = json.loads(plan_file.read_text()).get("class_map", "") if plan_file.is_file() else ""
        args.class_map = args.class_map or class_map
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for budget in args.budgets:
            for seed in args.seeds:
                for strategy in args.strategies:
                    status = run_cell(args, strategy, budget, seed)
                    if status != EXIT_OK:
                        return status
    records = finished_cells(args.out, args.class_map)
    if not records:
        raise ConfigError(f"{args.out / 'finetune'}: no finished cell to report")
    write_outputs(args.out, records, args.class_map)
    print(f"{PROG}: {len(records)} cells -> {args.out / 'selection.md'}, {args.out / 'selection.png'}")
    return EXIT_OK


__all__ = ["main", "build_parser", "cell_key", "chosen_scans", "finished_cells", "report", "plot"]


if __name__ == "__main__":
    sys.exit(main())
