"""The data-efficiency study (docs/results.md): fine-tuning with few labels, scratch against
pretrained, on the labelled real scans beside the repository.

A *cell* is one fine-tuning run: a protocol (which scans train, which are scored), a row (the
initial weights), a mode (end to end, or ``probe``: the encoder frozen for every step, a linear head
on fixed features trained with the same labels and steps), a label budget (fraction of the labelled
points of each train scan, optionally K of the train scans) and a seed (label selection, fresh
weights, augmentations). Every row gets the same steps and the same network: ``scratch`` is the
pretrained checkpoint's architecture and preprocessing with fresh weights (``random_weights``).
Test scans are scored once, after the last step (no checkpoint selection on the test set).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ...config import set_dotted
from .config import config_from_dict
from ..study.report import classes_reached
from .loop import finetune

SEQ01 = [f"lidar/semantickitti/seq01_00000{i}.points.npy" for i in range(3)]
KITTI_700 = ["lidar/semantickitti/000700.points.npy"]
SCANNET = ["indoor/scannet/scene0000_00_vert_all.npy"]


@dataclass(frozen=True)
class Protocol:
    train: tuple[str, ...]  # paths under the data root
    test: tuple[str, ...]  # empty: held-out blocks of the train scans
    class_map: str
    block_size: float = 10.0  # metres, block protocols
    title: str = ""


PROTOCOLS: dict[str, Protocol] = {
    "seq01-to-000700": Protocol(tuple(SEQ01), tuple(KITTI_700), "semantickitti-learning",
                                title="train SemanticKITTI seq01 frames 0-2 (sensor frame), test 000700 (world frame)"),
    "000700-to-seq01": Protocol(tuple(KITTI_700), tuple(SEQ01), "semantickitti-learning",
                                title="train SemanticKITTI 000700, test seq01 frames 0-2"),
    "000700-blocks": Protocol(tuple(KITTI_700), (), "semantickitti-learning", 10.0,
                              title="SemanticKITTI 000700, 30 % of its 10 m blocks held out"),
    "scannet-blocks": Protocol(tuple(SCANNET), (), "scannet20", 1.5,
                               title="ScanNet scene0000_00, 30 % of its 1.5 m blocks held out"),
}


@dataclass(frozen=True)
class Cell:
    protocol: str
    row: str  # "scratch", "pretrained", or another recipe's name
    init: str  # checkpoint path
    mode: str  # "finetune" or "probe"
    fraction: float
    scans: int  # 0: all train scans
    seed: int
    base: str = ""  # a variant row: the row whose weights it starts from ("scratch": fresh); "": itself
    overrides: tuple[str, ...] = ()  # a variant row: SECTION.KEY=VALUE applied to every cell's config

    @property
    def key(self) -> str:
        return f"{self.protocol}__{self.row}__{self.mode}__p{self.fraction:g}__k{self.scans}__s{self.seed}"


def cell_config(cell: Cell, data_root: Path, out_dir: Path, steps: int) -> dict:
    """The ssl3d-finetune config of one cell (plain data, as a YAML file would hold it); a variant
    row's overrides come last, so they may change any of it (the probe mode's frozen steps too)."""
    proto = PROTOCOLS[cell.protocol]
    validation = ({"sources": [str(data_root / p) for p in proto.test]} if proto.test else
                  {"split": "block", "block_size": proto.block_size, "test_fraction": 0.3, "seed": 0})
    cfg = {
        "init": cell.init,
        "random_weights": (cell.base or cell.row) == "scratch",
        "data": {"sources": [str(data_root / p) for p in proto.train]},
        "labels": {"class_map": proto.class_map, "fraction": cell.fraction, "scans": cell.scans, "seed": cell.seed},
        "validation": {**validation, "every": steps},  # scored once, after the last step
        "optim": {"freeze_encoder_steps": steps if cell.mode == "probe" else 0},
        "run": {"steps": steps, "batch_size": 1, "workers": 1, "threads": 1, "seed": cell.seed, "tensorboard": False,
                "checkpoint_every": max(steps // 4, 1), "out_dir": str(out_dir)},
    }
    for assignment in cell.overrides:
        set_dotted(cfg, assignment)
    return cfg


def run_cell(cell: Cell, data_root: Path, study_dir: Path, steps: int) -> dict:
    """One cell, cached in STUDY/cells/KEY.json (a stopped cell resumes from its training state)."""
    cached = study_dir / "cells" / f"{cell.key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    out = study_dir / "runs" / cell.key
    cfg = config_from_dict(cell_config(cell, data_root, out, steps))
    t0 = time.perf_counter()
    result = finetune(cfg, resume=(out / "checkpoints").is_dir(), progress=False)
    record = {**asdict(cell), "steps": steps, "miou": result.best.get("miou"), "accuracy": result.best.get("accuracy"),
              "selected_points": result.selection["selected_points"], "scans_used": result.selection["scans_used"],
              "iou": result.best.get("iou"), "seconds": round(time.perf_counter() - t0, 1), "completed": result.completed}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(record, indent=1))
    return record


def _miou(record: dict) -> float | None:
    return None if record["miou"] is None else 100 * record["miou"]


def summarize(records: Sequence[dict], value=_miou, what: str = "") -> str:
    """Markdown: per protocol, ``value`` (default mIoU %) mean ± std over seeds for every row / mode /
    budget; ``what`` is added to each table's title."""
    lines = []
    for protocol in sorted({r["protocol"] for r in records}, key=list(PROTOCOLS).index):
        rows = [r for r in records if r["protocol"] == protocol]
        budgets = sorted({(r["fraction"], r["scans"]) for r in rows}, key=lambda b: (b[1] or math.inf, b[0]))
        header = [f"{f * 100:g} %" + (f", {k} scan{'s' if k > 1 else ''}" if k else "") for f, k in budgets]
        lines += [f"### {protocol}: {PROTOCOLS[protocol].title}{what}", "",
                  "| row | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        # table order, whatever order the cells were run or read in: scratch, pretrained, the other
        # rows by name; fine-tuned before the frozen probe
        for row, mode in sorted({(r["row"], r["mode"]) for r in rows},
                                key=lambda rm: ({"scratch": 0, "pretrained": 1}.get(rm[0], 2), rm[0], rm[1])):
            cells = []
            for f, k in budgets:
                values = [v for r in rows if (r["row"], r["mode"], r["fraction"], r["scans"]) == (row, mode, f, k)
                          and (v := value(r)) is not None]
                if not values:
                    cells.append("—")
                elif len(values) == 1:
                    cells.append(f"{values[0]:.1f} (1 seed)")
                else:
                    cells.append(f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f} ({len(values)} seeds)")
            lines.append(f"| {row} ({'linear probe, frozen' if mode == 'probe' else 'fine-tuned'}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def report(records: Sequence[dict]) -> str:
    """study.md: the mIoU tables, then how many classes each cell reaches (cells with per-class IoU)."""
    reach = [r for r in records if r.get("iou") is not None]
    return summarize(records) + ("\n" + summarize(reach, classes_reached, ", classes with test IoU ≥ 1 %") if reach else "")


def cached_records(study_dir: Path) -> list[dict]:
    """Every finished cell of a study folder."""
    return [json.loads(p.read_text()) for p in sorted((study_dir / "cells").glob("*.json"))]


__all__ = ["PROTOCOLS", "Protocol", "Cell", "cached_records", "cell_config", "report", "run_cell",
           "summarize"]
