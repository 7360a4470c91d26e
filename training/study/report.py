"""A study's report: markdown tables (mIoU mean ± std over seeds, the gain over scratch seed by seed,
classes reached, per-class IoU) and the plot a team decides with: test mIoU against the label
fraction (log x), one line per row and mode, its spread over seeds as a band."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .plan import SCRATCH, Budget

MODE_TITLES = {"finetune": "fine-tuned", "probe": "linear probe, frozen", "lpft": "probe, then fine-tuned (LP-FT)"}
# what a mode's gain is measured against in scratch's cells: LP-FT is a way to fine-tune, so against
# scratch fine-tuned (the number a team would otherwise get); a probe against a probe on random weights
REFERENCE_MODE = {"finetune": "finetune", "probe": "probe", "lpft": "finetune"}
LINE_STYLES = {"finetune": ("-", "o"), "probe": ("--", "s"), "lpft": (":", "^")}
REACHED_IOU = 0.01  # a class counts as reached at test IoU >= 1 %


def budget_of(record: dict) -> tuple[int, float]:
    return record.get("scans_per_source", 0), record["fraction"]


def budget_label(budget: tuple[int, float]) -> str:
    k, fraction = budget
    return Budget(fraction, k).label


def row_order(records: Sequence[dict]) -> list[tuple[str, str]]:
    """scratch first, then the other rows in the order they first appear; modes in MODE_TITLES' order."""
    rows = list(dict.fromkeys(r["row"] for r in records))
    rows.sort(key=lambda name: name != SCRATCH)
    modes = [m for m in MODE_TITLES if any(r["mode"] == m for r in records)]
    return [(row, mode) for row in rows for mode in modes if any((r["row"], r["mode"]) == (row, mode) for r in records)]


def budget_order(records: Sequence[dict]) -> list[tuple[int, float]]:
    """Fractions ascending, then the K-scans-per-sequence budgets."""
    return sorted({budget_of(r) for r in records}, key=lambda b: (b[0] > 0, b[0], b[1]))


def miou_percent(record: dict) -> float | None:
    return None if record.get("miou") is None else 100 * record["miou"]


def classes_reached(record: dict) -> float | None:
    iou = record.get("iou")
    return None if iou is None else float(sum(v is not None and v >= REACHED_IOU for v in iou.values()))


def spread(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f} ({len(values)} seeds)"


def table(records: Sequence[dict], value: Callable[[dict], float | None], title: str) -> list[str]:
    budgets = budget_order(records)
    lines = [f"### {title}", "", "| row | " + " | ".join(budget_label(b) for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for row, mode in row_order(records):
        cells = [spread([v for r in records if (r["row"], r["mode"], budget_of(r)) == (row, mode, b)
                         and (v := value(r)) is not None]) for b in budgets]
        lines.append(f"| {row} ({MODE_TITLES[mode]}) | " + " | ".join(cells) + " |")
    return lines + [""]


def gain_table(records: Sequence[dict]) -> list[str]:
    """Each row minus scratch in the reference mode (REFERENCE_MODE), same budget and seed: the
    per-seed differences and their mean, so a gain is read against its own spread."""
    budgets = budget_order(records)
    by_key = {(r["row"], r["mode"], budget_of(r), r["seed"]): miou_percent(r) for r in records}
    lines = ["### Gain over scratch (test mIoU points; per seed, then mean ± std)", "",
             "| row | " + " | ".join(budget_label(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for row, mode in row_order(records):
        reference = REFERENCE_MODE[mode]
        if row == SCRATCH and reference == mode:
            continue
        cells = []
        for b in budgets:
            diffs = [v - base for (rw, md, bd, seed), v in sorted(by_key.items(), key=lambda kv: kv[0][3])
                     if (rw, md, bd) == (row, mode, b) and v is not None
                     and (base := by_key.get((SCRATCH, reference, b, seed))) is not None]
            cells.append("—" if not diffs else ", ".join(f"{d:+.1f}" for d in diffs) +
                         (f" → {np.mean(diffs):+.1f} ± {np.std(diffs, ddof=1):.1f}" if len(diffs) > 1 else ""))
        versus = "" if reference == mode else f" vs scratch {MODE_TITLES[reference]}"
        lines.append(f"| {row} ({MODE_TITLES[mode]}{versus}) | " + " | ".join(cells) + " |")
    return lines + [""]


def per_class_tables(records: Sequence[dict]) -> list[str]:
    """Test IoU (%) per class, mean over seeds, one table per budget."""
    names = next((list(r["iou"]) for r in records if r.get("iou")), [])
    if not names:
        return []
    lines = []
    for b in budget_order(records):
        lines += [f"### Per-class test IoU (%), {budget_label(b)} (mean over seeds)", "",
                  "| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row, mode in row_order(records):
            cells = [r for r in records if (r["row"], r["mode"], budget_of(r)) == (row, mode, b) and r.get("iou")]
            if not cells:
                continue
            means = []
            for name in names:
                values = [100 * r["iou"][name] for r in cells if r["iou"].get(name) is not None]
                means.append(f"{np.mean(values):.1f}" if values else "—")
            lines.append(f"| {row} ({MODE_TITLES[mode]}) | " + " | ".join(means) + " |")
        lines.append("")
    return lines


def report(records: Sequence[dict], header: Sequence[str] = ()) -> str:
    """study.md: what ran, then the tables."""
    lines = list(header)
    lines += table(records, miou_percent, "Test mIoU (%)")
    lines += gain_table(records)
    lines += table(records, classes_reached, f"Classes reached (test IoU ≥ {REACHED_IOU:.0%})")
    lines += per_class_tables(records)
    return "\n".join(lines)


def effective_fraction(record: dict, total_labelled: int | None) -> float:
    """The share of the training set's labelled points a cell trained on (a K-scans budget's x)."""
    if record.get("scans_per_source") and total_labelled:
        return record["selected_points"] / total_labelled
    return record["fraction"]


def plot(records: Sequence[dict], path: Path, title: str, total_labelled: int | None = None) -> Path:
    """mIoU against label fraction, log x; a line and a ± std band per row and mode, K-scans budgets
    as separate markers at the share of labelled points they hold."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a robot or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    # one colour per row (its modes share it, told apart by line and marker), distinct
    # for up to 20 rows: the default cycle repeats after 10 and gave two rows one colour
    rows = list(dict.fromkeys(row for row, _ in row_order(records)))
    palette = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    colours = {row: palette(index % palette.N) for index, row in enumerate(rows)}
    for row, mode in row_order(records):
        colour = colours[row]
        label = f"{row} ({MODE_TITLES[mode]})"
        style, marker = LINE_STYLES[mode]
        mine = [r for r in records if (r["row"], r["mode"]) == (row, mode) and miou_percent(r) is not None]
        for scans_budget in (False, True):
            points = []
            for b in budget_order(mine):
                if (b[0] > 0) != scans_budget:
                    continue
                cells = [r for r in mine if budget_of(r) == b]
                xs = [effective_fraction(r, total_labelled) * 100 for r in cells]
                ys = [miou_percent(r) for r in cells]
                points.append((float(np.mean(xs)), float(np.mean(ys)), float(np.std(ys, ddof=1)) if len(ys) > 1 else 0.0))
            if not points:
                continue
            x, y, s = (np.array(v) for v in zip(*points))
            if scans_budget:
                ax.errorbar(x, y, yerr=s, fmt="D", color=colour, mfc="none", capsize=3,
                            label=f"{label}, K scans per sequence")
            else:
                ax.plot(x, y, style, marker=marker, color=colour, label=label)
                ax.fill_between(x, y - s, y + s, color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    return save_miou_plot(fig, ax, path, title, "labelled points used for training (% of the training set, log scale)")


def save_miou_plot(fig, ax, path: Path, title: str, xlabel: str) -> Path:
    """The studies' common finish: test mIoU on y, a grid, the legend; written to ``path`` and closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test mIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def cached_records(out: Path) -> list[dict]:
    """Every finished cell of a study folder (OUT/cells/*.json, written by run_study), in key order."""
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


__all__ = ["cached_records", "report", "plot", "table", "gain_table", "per_class_tables", "classes_reached", "miou_percent",
           "budget_label", "budget_order", "row_order", "effective_fraction", "REACHED_IOU", "MODE_TITLES", "REFERENCE_MODE"]
