"""What a label-efficiency study runs: its data split, its rows (encoders), its label budgets and the
cells they multiply into.

A *cell* is one fine-tuning run: a row (the initial weights), a mode (``finetune``: end to end;
``probe``: the encoder frozen for every step, a linear head on fixed features, the same labels and
steps; ``lpft``: the probe cell's model, then fine-tuned end to end at a lower learning rate, LP-FT
after Kumar et al. 2022, a fine-tune that starts from a trained head and so moves the pretrained
features less), a label budget and a seed (label selection, fresh weights, augmentations). A budget is either
a fraction of the labelled points of every training scan, or K scans of every training source (a
sequence folder) with all their labels. Every row gets the same steps and the same network:
``scratch`` is the first pretrained row's architecture and preprocessing with fresh weights.

The test scans are scored once, on the model the run ends with (or, with validation scans, the one
that scored best on those): they never select anything, so a study must keep them apart from the
training and validation scans (checked before anything runs).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ssl3d_ros.config import ConfigError, set_dotted
from ssl3d_ros.io import ScanReadError, open_source

SCRATCH = "scratch"
PRETRAIN_PREFIX = "pretrain:"
MODES = ("finetune", "probe", "lpft")
# LP-FT's second stage, set before any test cell ran (not tuned): half the probe's steps, a tenth of the
# fine-tuning learning rate (the head starts trained, so a full rate would mostly move the encoder)
LPFT_STEPS_SHARE = 0.5
LPFT_LR_SCALE = 0.1
SELECTIONS = ("random", "blocks")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Row:
    """One encoder of the study.

    ``checkpoint``: an encoder or node checkpoint to start from; ``pretrain_config``: a pretraining
    config that the study runs first (on its unlabelled sources, ``pretrain_overrides`` applied);
    neither: scratch (fresh weights of the first pretrained row's network, or of the fine-tuning
    config's encoder when no row has one).
    """

    name: str
    checkpoint: str = ""
    pretrain_config: str = ""
    pretrain_overrides: tuple[str, ...] = ()

    @property
    def is_scratch(self) -> bool:
        return not self.checkpoint and not self.pretrain_config


def parse_row(spec: str) -> Row:
    """``scratch``, ``NAME=CHECKPOINT`` or ``NAME=pretrain:CONFIG.yaml[;SECTION.KEY=VALUE...]``."""
    if spec == SCRATCH:
        return Row(SCRATCH)
    name, sep, value = spec.partition("=")
    if not sep or not value:
        raise ConfigError(f"--rows {spec!r}: expected 'scratch', NAME=CHECKPOINT or NAME=pretrain:CONFIG.yaml[;KEY=VALUE...]")
    if not _NAME.match(name) or name == SCRATCH:
        raise ConfigError(f"--rows {spec!r}: the name {name!r} must be letters, digits, '_.+-' and not 'scratch'")
    if value.startswith(PRETRAIN_PREFIX):
        config, *overrides = value[len(PRETRAIN_PREFIX):].split(";")
        if not Path(config).is_file():
            raise ConfigError(f"--rows {spec!r}: pretraining config {config} not found")
        for assignment in overrides:
            set_dotted({}, assignment)  # the form is checked here; the keys when the config loads
        return Row(name, pretrain_config=config, pretrain_overrides=tuple(overrides))
    if not Path(value).is_file():
        raise ConfigError(f"--rows {spec!r}: checkpoint {value} not found")
    return Row(name, checkpoint=value)


@dataclass(frozen=True)
class Budget:
    """A fraction of every training scan's labelled points, or ``scans_per_source`` scans of every
    training source with all their labels."""

    fraction: float = 1.0
    scans_per_source: int = 0

    @property
    def label(self) -> str:
        if self.scans_per_source:
            return f"{self.scans_per_source} scan{'s' if self.scans_per_source > 1 else ''} per sequence"
        return f"{self.fraction * 100:g} %"

    @property
    def key(self) -> str:
        return f"k{self.scans_per_source}" if self.scans_per_source else f"p{self.fraction:g}"


@dataclass(frozen=True)
class Cell:
    row: str
    mode: str
    budget: Budget
    seed: int

    @property
    def key(self) -> str:
        return f"{self.row}__{self.mode}__{self.budget.key}__s{self.seed}"


@dataclass
class StudyPlan:
    """Everything the cells share. Paths are as given (scan folders, files or bags)."""

    train: list[str]
    test: list[str]
    class_map: str
    rows: list[Row]
    budgets: list[Budget]
    seeds: list[int]
    modes: list[str] = field(default_factory=lambda: list(MODES))
    validation: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    unlabelled_exclude: list[str] = field(default_factory=list)  # fnmatch globs, the pretraining's data.exclude
    steps: int = 1000
    selection: str = "random"
    block_size: float = 4.0
    pretrain_steps: int = 0  # 0: each pretraining config's own run.steps
    finetune_config: str = ""
    finetune_overrides: list[str] = field(default_factory=list)
    val_every: int = 0  # 0: steps // 5
    lpft_steps: int = 0  # lpft cells' end-to-end stage after the probe (0: steps * LPFT_STEPS_SHARE)
    lpft_lr_scale: float = LPFT_LR_SCALE  # that stage's learning rates: the fine-tuning config's times this

    @property
    def lpft_stage_steps(self) -> int:
        return self.lpft_steps or max(int(self.steps * LPFT_STEPS_SHARE), 1)

    def cells(self) -> list[Cell]:
        """Every cell, cheapest budgets first within a seed, so a stopped study has whole seeds."""
        return [Cell(row.name, mode, budget, seed) for seed in self.seeds for budget in self.budgets
                for row in self.rows for mode in self.modes]

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def check_plan(plan: StudyPlan) -> None:
    """Refuse a study that could not mean what it says, before anything runs (ConfigError)."""
    if not plan.train or not plan.test:
        raise ConfigError("a study needs labelled training scans (--train) and test scans (--test)")
    names = [r.name for r in plan.rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"--rows: each row needs its own name, got {names}")
    if any(m not in MODES for m in plan.modes):
        raise ConfigError(f"--modes: choose from {', '.join(MODES)}")
    if plan.selection not in SELECTIONS:
        raise ConfigError(f"--selection: choose from {', '.join(SELECTIONS)}")
    for b in plan.budgets:
        if not (0 < b.fraction <= 1) or b.scans_per_source < 0:
            raise ConfigError(f"label budget {b.label}: fractions must be in (0, 1], scan counts >= 1")
    if plan.steps < 1:
        raise ConfigError("--steps must be >= 1")
    if plan.lpft_steps < 0 or not 0 < plan.lpft_lr_scale <= 1:
        raise ConfigError("--lpft-steps must be >= 0 (0: half of --steps) and --lpft-lr-scale in (0, 1]")
    if any(r.pretrain_config for r in plan.rows) and not plan.unlabelled:
        raise ConfigError("a pretrain: row needs the unlabelled scans to pretrain on (--unlabelled)")
    test = scan_files(plan.test, "--test")
    for option, specs in (("--train", plan.train), ("--val", plan.validation), ("--unlabelled", plan.unlabelled)):
        files = scan_files(specs, option) if specs else set()
        if option == "--unlabelled" and plan.unlabelled_exclude:
            files = {f for f in files if not any(fnmatch.fnmatch(f, g) for g in plan.unlabelled_exclude)}
            if not files:
                raise ConfigError(f"--exclude {plan.unlabelled_exclude} leaves no scan of --unlabelled {plan.unlabelled}")
        shared = test & files
        if shared:
            raise ConfigError(f"{option} and --test share {len(shared)} scan(s), e.g. {sorted(shared)[0]}: "
                              "the test scans must never be trained, pretrained or validated on")


def scan_files(specs: Sequence[str], option: str) -> set[str]:
    """The resolved paths of every scan file behind ``specs`` (simulator specs stand for themselves)."""
    files = set()
    for spec in specs:
        if spec.startswith("sim:"):
            files.add(spec)
            continue
        if not Path(spec).exists():
            raise ConfigError(f"{option} {spec}: no such file or folder")
        try:
            source = open_source(spec)
        except (ScanReadError, ValueError) as exc:
            raise ConfigError(f"{option} {spec}: {exc}") from None
        describe = getattr(source, "describe", None)
        if describe is None:
            files.add(str(Path(spec).resolve()))
            continue
        for i in range(len(source)):
            where = describe(i)
            files.add(str(Path(where).resolve()) if Path(where).exists() else f"{Path(spec).resolve()}#{where}")
    return files


def scans_per_source(sources: Sequence[str], k: int, seed: int) -> list[str]:
    """``k`` seeded scans of every source (a sequence folder), as file paths in their order: the
    "K labelled scans per sequence" budget. Sources that are not folders of scan files stay whole."""
    chosen = []
    for index, spec in enumerate(sources):
        if spec.startswith("sim:") or not Path(spec).is_dir():
            chosen.append(spec)
            continue
        source = open_source(spec)
        files = [source.describe(i) for i in range(len(source))]
        if not all(Path(f).is_file() for f in files):
            chosen.append(spec)  # a bag folder: its messages are not files to pick from
            continue
        pick = np.sort(np.random.default_rng([seed, index, 0x5EC]).permutation(len(files))[:k])
        chosen += [files[i] for i in pick]
    return chosen


__all__ = ["SCRATCH", "MODES", "LPFT_STEPS_SHARE", "LPFT_LR_SCALE", "SELECTIONS", "Row", "parse_row", "Budget", "Cell", "StudyPlan", "check_plan", "scan_files",
           "scans_per_source"]
