"""Running a study: pretraining its ``pretrain:`` rows, then every cell (fine-tune, then score the test
scans once), each cached in OUT so a stopped study continues where it stopped.

    OUT/pretrain/ROW/           ssl3d-pretrain's run of a pretrain: row (resumable; encoder.safetensors)
    OUT/runs/CELL/              ssl3d-finetune's run of a cell (resumable; model.safetensors; an lpft
                                cell's run starts from its probe cell's model, which must stay there)
    OUT/runs/CELL/test/         the test scores of that model (evaluation.json)
    OUT/cells/CELL.json         the finished cell: budget, labels used, validation and test scores
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ssl3d_ros.atomic import atomic_write
from ssl3d_ros.config import ConfigError, read_yaml, set_dotted

from ..config import load_config as load_pretrain_config
from ..finetune.config import config_from_dict
from ..finetune.loop import evaluate, finetune
from ..loop import train
from .plan import Cell, Row, StudyPlan, scans_per_source

log = logging.getLogger(__name__)


class StudyInterrupted(Exception):
    """A run stopped by a signal after saving its state: the study continues with the same command."""


@dataclass
class RowWeights:
    """Where a row's cells start: a checkpoint (fresh weights of its network for scratch) or none."""

    init: str  # "none" or a checkpoint path
    random_weights: bool
    pretrain_steps: int | None = None  # steps of the study's own pretraining, when it ran one


def pretrain_row(plan: StudyPlan, row: Row, out: Path, progress: bool = False) -> Path:
    """Run (or continue) the pretraining of a ``pretrain:`` row on the study's unlabelled scans."""
    run_dir = out / "pretrain" / row.name
    encoder = run_dir / "encoder.safetensors"
    if encoder.is_file():
        return encoder
    overrides = [*row.pretrain_overrides, f"data.sources={json.dumps(list(plan.unlabelled))}", f"run.out_dir={run_dir}"]
    if plan.unlabelled_exclude:
        overrides.append(f"data.exclude={json.dumps(list(plan.unlabelled_exclude))}")
    if plan.pretrain_steps:
        overrides.append(f"run.steps={plan.pretrain_steps}")
    cfg = load_pretrain_config(row.pretrain_config, overrides)
    log.warning("pretraining row %s: %s, %d steps, into %s", row.name, row.pretrain_config, cfg.run.steps, run_dir)
    result = train(cfg, resume=(run_dir / "checkpoints").is_dir(), progress=progress)
    if not result.completed or result.encoder_path is None:
        raise StudyInterrupted(f"pretraining of row {row.name} stopped at step {result.step}")
    return Path(result.encoder_path)


def row_weights(plan: StudyPlan, out: Path, progress: bool = False) -> dict[str, RowWeights]:
    """Every row's starting weights, pretraining the ``pretrain:`` rows first. Scratch takes the first
    pretrained row's network (same architecture and preprocessing, fresh weights)."""
    weights: dict[str, RowWeights] = {}
    for row in plan.rows:
        if row.checkpoint:
            weights[row.name] = RowWeights(row.checkpoint, False)
        elif row.pretrain_config:
            steps = load_pretrain_config(row.pretrain_config, list(row.pretrain_overrides)).run.steps
            weights[row.name] = RowWeights(str(pretrain_row(plan, row, out, progress)), False,
                                           plan.pretrain_steps or steps)
    architecture = next(iter(weights.values()), None)
    for row in plan.rows:
        if row.is_scratch:
            weights[row.name] = RowWeights(architecture.init, True) if architecture else RowWeights("none", False)
    return weights


def cell_config(plan: StudyPlan, cell: Cell, weights: RowWeights, run_dir: Path) -> dict:
    """The ssl3d-finetune config of one cell, as a YAML file would hold it: the study's fine-tuning
    config, then what the cell fixes, then the study's --set overrides (they may change any of it)."""
    cfg = copy.deepcopy(read_yaml(plan.finetune_config)) if plan.finetune_config else {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{plan.finetune_config}: a fine-tuning config must be a mapping")
    k = cell.budget.scans_per_source
    sources = scans_per_source(plan.train, k, cell.seed) if k else list(plan.train)
    every = plan.val_every or max(plan.steps // 5, 1)
    study = {
        "init": weights.init,
        "random_weights": weights.random_weights,
        "data": {"sources": sources},
        "labels": {"class_map": plan.class_map, "fraction": 1.0 if k else cell.budget.fraction,
                   "selection": plan.selection, "block_size": plan.block_size, "seed": cell.seed},
        # validation scans (a training sequence, never the test set) pick the kept checkpoint; without
        # them the run's last model is kept
        "validation": {"sources": list(plan.validation), "every": every if plan.validation else plan.steps},
        "optim": {"freeze_encoder_steps": plan.steps if cell.mode == "probe" else 0},
        # one torch thread and one loader worker: a study runs beside other work on a small machine
        "run": {"steps": plan.steps, "batch_size": 1, "workers": 1, "threads": 1, "seed": cell.seed, "tensorboard": False,
                "checkpoint_every": max(plan.steps // 10, 1), "out_dir": str(run_dir)},
    }
    merge(cfg, study)
    for assignment in plan.finetune_overrides:
        set_dotted(cfg, assignment)
    return cfg


def lpft_stage_config(plan: StudyPlan, cell: Cell, probe_model: Path, run_dir: Path) -> dict:
    """The end-to-end stage of an ``lpft`` cell: the probe cell's model (encoder and trained head), every
    weight trained for ``plan.lpft_stage_steps`` at ``plan.lpft_lr_scale`` times the learning rates
    the study's other cells use; the same labels (same budget and seed)."""
    cfg = cell_config(plan, cell, RowWeights(str(probe_model), False), run_dir)
    steps = plan.lpft_stage_steps
    lr = config_from_dict(cfg).optim.lr  # the study's rate, whichever of config, built-in or --set gave it
    # freeze 0 even against a --set of it: the probe cell was the frozen stage
    merge(cfg, {"init_head": True, "optim": {"lr": lr * plan.lpft_lr_scale, "freeze_encoder_steps": 0},
                "validation": {"every": min(cfg["validation"]["every"], steps)},
                "run": {"steps": steps, "checkpoint_every": max(steps // 10, 1)}})
    return cfg


def merge(into: dict, update: dict) -> dict:
    """Nested dict update: mappings merge key by key, anything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def run_cell(plan: StudyPlan, cell: Cell, weights: RowWeights, out: Path, progress: bool = False) -> dict:
    """One cell, cached in OUT/cells/KEY.json; a stopped cell resumes from its training state."""
    cached = out / "cells" / f"{cell.key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    run_dir = out / "runs" / cell.key
    if cell.mode == "lpft":
        probe_cell = replace(cell, mode="probe")
        run_cell(plan, probe_cell, weights, out, progress)  # its own cell: run (and cached) first if missing
        probe_model = out / "runs" / probe_cell.key / "model.safetensors"
        if not probe_model.is_file():
            raise ConfigError(f"{probe_model}: the model of probe cell {probe_cell.key}, which lpft cell {cell.key} "
                              f"continues, is gone; delete {out / 'cells' / (probe_cell.key + '.json')} to run it again")
        cfg_dict = lpft_stage_config(plan, cell, probe_model, run_dir)
    else:
        cfg_dict = cell_config(plan, cell, weights, run_dir)
    t0 = time.perf_counter()  # this cell's own run (an lpft cell's probe is timed in its own record)
    result = finetune(config_from_dict(cfg_dict), resume=(run_dir / "checkpoints").is_dir(), progress=progress)
    if not result.completed:
        raise StudyInterrupted(f"cell {cell.key} stopped at step {result.step}")
    # the test scans, scored once on the kept model (the last one, or the best on validation)
    test_cfg = {"init": str(result.model_path), "init_head": True, "data": {"sources": list(plan.test)},
                "labels": {"class_map": plan.class_map}, "validation": {"sources": list(plan.test)},
                "run": {"out_dir": str(run_dir / "test"), "threads": cfg_dict["run"].get("threads", 1),
                        "device": cfg_dict["run"].get("device", "auto"), "tensorboard": False}}
    test = evaluate(config_from_dict(test_cfg))
    selection = result.selection
    record = {
        "row": cell.row, "mode": cell.mode, "fraction": cell.budget.fraction, "scans_per_source": cell.budget.scans_per_source,
        "seed": cell.seed, "steps": plan.steps, "selection": plan.selection, "init": weights.init,
        "random_weights": weights.random_weights, "pretrain_steps": weights.pretrain_steps,
        "scans_used": selection["scans_used"], "selected_points": selection["selected_points"],
        "labelled_points": sum(s["labelled_points"] for s in selection["per_scan"]),
        "validation": {k: v for k, v in result.best.items() if k != "confusion"} if plan.validation else None,
        "miou": test["miou"], "accuracy": test["accuracy"], "iou": test["iou"], "support": test["support"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if cell.mode == "lpft":  # what the second stage was; its start is the probe cell of the same key
        record["lpft"] = {"probe_steps": plan.steps, "steps": cfg_dict["run"]["steps"], "lr": cfg_dict["optim"]["lr"]}
    cached.parent.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(record, indent=1)
    atomic_write(cached, lambda tmp: tmp.write_text(doc))
    return record


def run_study(plan: StudyPlan, out: Path, progress: bool = False,
              on_cell: Callable[[Cell, dict], None] | None = None) -> list[dict]:
    """Pretrain the rows that ask for it, then run every missing cell; returns every cell's record."""
    weights = row_weights(plan, out, progress)
    records = []
    for cell in plan.cells():
        record = run_cell(plan, cell, weights[cell.row], out, progress)
        records.append(record)
        if on_cell:
            on_cell(cell, record)
    return records


__all__ = ["StudyInterrupted", "RowWeights", "pretrain_row", "row_weights", "cell_config", "lpft_stage_config", "merge", "run_cell", "run_study"]
