"""The real-data study's tables (``study.json`` + ``study.md``) from the cached pieces of a study
folder: mean ± sample std over seeds, and each encoder's gain over the random-init encoder paired per
seed (the same labelled-point subset)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_json
from .report import markdown_table
from .study import BASELINE_ROWS, PRETRAIN_SOURCES, Study, load_json
from .study_data import LabelledScanSpec

AUDIT_TARGETS = ("height", "normal", "xyz")
PERTURBATION_TITLES = {"half_beams": "half beams", "range_noise": "range noise"}


def mean_std(values) -> tuple[float | None, float | None, int]:
    """(mean, sample std, n) of the values that are not None; (None, None, 0) when there are none."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def pm(mean, std, n, percent: bool = True) -> str:
    """``mean ± std`` (in % unless ``percent`` is False), marked ``(n=…)`` under 3 seeds."""
    if mean is None:
        return "–"
    scale, digits = (100, 1) if percent else (1, 3)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}" + ("" if n >= 3 else f" (n={n})")


def piece(study: Study, kind: str, scan: str, row: str, seed: int):
    """A cached probe/audit piece; the reference rows come from ``baselines_from`` when given."""
    base = study.baselines_from if (study.baselines_from and row in BASELINE_ROWS) else study.out
    return load_json(base / kind / scan / f"{row}-s{seed}.json")


def row_label(study: Study, row: str) -> str:
    labels = {"random": "random init (same encoder)", "raw": "raw input features (linear)",
              "supervised": f"supervised end-to-end ({study.budget.supervised_steps} steps, upper ref.)"}
    return labels.get(row, f"`{row}` pretrained")


def probe_table(study: Study, scan: str) -> tuple[dict, list[list[str]]]:
    rows: dict[str, dict] = {}
    table = []
    for row in list(study.variants) + list(BASELINE_ROWS):
        runs = {s: piece(study, "probe", scan, row, s) for s in study.seeds}
        runs = {s: r for s, r in runs.items() if r}
        if not runs:
            continue
        d: dict = {"seeds": len(runs)}
        for key in ("linear", "knn"):
            d[key] = mean_std([r[key][0] for r in runs.values() if key in r])
            pairs = []
            for s, r in runs.items():
                base = piece(study, "probe", scan, "random", s)
                if base and key in r and key in base:
                    pairs.append(r[key][0] - base[key][0])
            d[key + "_vs_random"] = mean_std(pairs)
        for p in study.robustness:
            d[p] = mean_std([r[p]["miou"] for r in runs.values() if p in r])
            d[p + "_drop"] = mean_std([r[p]["drop"] for r in runs.values() if p in r])
        rows[row] = d
        cells = [row_label(study, row), str(len(runs)), pm(*d["linear"]), pm(*d["linear_vs_random"]),
                 pm(*d["knn"]), pm(*d["knn_vs_random"])]
        for p in study.robustness:
            cells += [pm(*d[p]), pm(*d[p + "_drop"])]
        table.append(cells)
    return rows, table


def audit_table(study: Study, scan: str) -> tuple[dict, list[list[str]]]:
    rows: dict[str, dict] = {}
    table = []
    for row in list(study.variants) + list(BASELINE_ROWS):
        runs = [r for r in (piece(study, "audit", scan, row, s) for s in study.seeds) if r]
        if not runs:
            continue
        a = {t: mean_std([r["r2"][t] for r in runs]) for t in AUDIT_TARGETS}
        a["miou"] = mean_std([r["miou"] for r in runs])
        rows[row] = a
        table.append([row_label(study, row), str(len(runs))] + [pm(*a[t], percent=False) for t in AUDIT_TARGETS]
                     + [pm(*a["miou"])])
    return rows, table


def collect(study: Study, scans: list[LabelledScanSpec]) -> tuple[dict, str]:
    """(study.json document, markdown tables) for ``scans`` from the folder's cached pieces."""
    records = {s.name: load_json(study.out / "labelled" / f"{s.name}.json") or {} for s in scans}
    b = study.budget
    doc: dict = {"budget": {"steps": b.steps, "batch_size": b.batch_size, "crop_points": b.crop_points,
                            "threads": study.threads, "pretrain_sources": list(PRETRAIN_SOURCES)},
                 # a variant's overrides may replace the data (e.g. data.sources): the header says so
                 "variant_overrides": {v: list(study.overrides.get(v, [])) for v in study.variants},
                 "split": {s.name: s.split().describe() for s in scans},
                 "perturbations": {s.name: records[s.name].get("perturbations", {}) for s in scans
                                   if study.robustness},
                 "datasets": {}, "audit": {}, "pretrain_seconds": {}}
    header = ["encoder", "seeds", "linear mIoU", "Δ vs random", "kNN mIoU", "Δ vs random"]
    for p in study.robustness:
        header += [f"linear, {PERTURBATION_TITLES[p]}", "drop"]
    md: list[str] = []
    for spec in scans:
        doc["datasets"][spec.name], table = probe_table(study, spec.name)
        md += [f"### {spec.heading}", "", markdown_table(header, table), ""]
    for spec in scans:
        doc["audit"][spec.name], table = audit_table(study, spec.name)
        if table:
            md += [f"### Shortcut audit, {spec.heading}", "",
                   markdown_table(["encoder", "seeds", "R² height", "R² normal", "R² xyz", "probe mIoU"], table), ""]
    for variant in study.variants:
        timings = [load_json(study.out / "pretrain" / f"{variant}-s{s}" / "timing.json") for s in study.seeds]
        doc["pretrain_seconds"][variant] = [t["seconds"] for t in timings if t]
    if any(doc["pretrain_seconds"].values()):
        md += [f"### Pretraining wall time per run (s, {study.threads} thread(s))", "",
               "| variant | runs | seconds |", "|---|---|---|"]
        for variant, secs in doc["pretrain_seconds"].items():
            if secs:
                md.append(f"| {variant} | {len(secs)} | {np.mean(secs):.0f} ± {np.std(secs):.0f} |")
        md.append("")
    return doc, "\n".join(md)


def write_report(study: Study, doc: dict, md: str) -> Path:
    """study.json and study.md (a header stating the protocol, then the tables) in the study folder."""
    atomic_write_json(study.out / "study.json", doc)
    b = study.budget
    robustness = ", ".join(f"{name}: {desc}" for name, desc in doc["perturbations"].items()) or "none"
    header = ["# Real-data study", "",
              f"- pretraining: {', '.join(PRETRAIN_SOURCES)} (unlabelled; a variant's overrides below may replace "
              f"them), every variant {b.steps} steps x batch "
              f"{b.batch_size} x {b.crop_points}-point crops, {study.threads} thread(s); "
              f"input features {' + '.join(b.features)}",
              *[f"- `{variant}`: {study.variants[variant]} with {'; '.join(items)}"
                for variant, items in doc.get("variant_overrides", {}).items() if items],
              f"- seeds: {study.seeds}; values mean ± sample std over seeds (n < 3 marked)",
              f"- split: {doc['split']}", f"- perturbations: {robustness}", ""]
    path = study.out / "study.md"
    text = "\n".join(header) + md + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


__all__ = ["audit_table", "collect", "mean_std", "piece", "pm", "probe_table", "write_report"]
