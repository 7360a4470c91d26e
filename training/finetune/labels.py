"""Labelled scans for fine-tuning: reading them, mapping labels to classes, and the limited-label
selections (K scans, a fraction of points, spatial blocks), each seeded and recorded.

A fine-tuning set is a handful to a few thousand labelled scans, so the scans are read once and
held in memory with their labels already replaced by class indices (``IGNORE`` where a point is
unlabelled or not selected); the DataLoader workers get them by pickling.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ssl3d_ros.config import ConfigError
from ssl3d_ros.io import ScanReadError, ScanSource, open_source
from ssl3d_ros.labels import IGNORE, ClassMap, load_class_map
from ssl3d_ros.scan import Scan

from ..data import SIM_PREFIX, DataConfig, parse_sim_spec, simulated_source
from .config import LabelConfig

log = logging.getLogger(__name__)

RAW_SEMANTICKITTI = "semantickitti-raw"
SEMANTIC_BITS = 0xFFFF  # SemanticKITTI .label: lower 16 bits semantic id, upper 16 instance id


def class_indices(labels: np.ndarray, class_map: ClassMap) -> np.ndarray:
    """(N,) int64 class indices of raw label ids; raw SemanticKITTI ids lose their instance bits."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if class_map.label_space == RAW_SEMANTICKITTI:
        labels = labels & SEMANTIC_BITS
    return class_map.apply(labels)


def resolve_class_map(cfg: LabelConfig, sources: Sequence[str]) -> ClassMap:
    """The configured class map, or the simulator's when every source is simulated."""
    if cfg.class_map:
        return load_class_map(cfg.class_map)
    scenes = {parse_sim_spec(s, 1)[0] for s in sources if s.startswith(SIM_PREFIX)}
    if len(scenes) == 1 and all(s.startswith(SIM_PREFIX) for s in sources):
        return load_class_map(f"sim-{scenes.pop()}")
    raise ConfigError("labels.class_map (--class-map) is required for recorded data, e.g. semantickitti "
                      "(raw .label ids), semantickitti-learning, scannet20 or a YAML path")


def open_labelled(specs: Sequence[str], data: DataConfig, label_field: str | None, sim_seed: int | None = None) -> list[ScanSource]:
    """One source per spec: ``sim:KIND[:COUNT]`` or a path the readers know (with its labels)."""
    sources = []
    for spec in specs:
        if spec.startswith(SIM_PREFIX):
            cfg = data if sim_seed is None else DataConfig(sim_count=data.sim_count, sim_seed=sim_seed, sim_lidar=data.sim_lidar)
            sources.append(simulated_source(spec, cfg))
        else:
            try:
                sources.append(open_source(spec, topics=data.topics or None, label_field=label_field))
            except (ScanReadError, ValueError) as exc:  # a bag that will not open, a folder without scans
                raise ConfigError(f"{spec}: {exc}") from None
    return sources


@dataclass
class ReadReport:
    scans: list[Scan] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)


def read_labelled(sources: Sequence[ScanSource], class_map: ClassMap) -> ReadReport:
    """Every scan of ``sources`` with labels mapped to class indices. Unreadable scans and scans
    without labels are logged and counted, not fatal; a set with no usable scan is (ConfigError)."""
    report = ReadReport()
    for source in sources:
        describe = getattr(source, "describe", lambda i: f"scan #{i}")
        for i in range(len(source)):
            where = describe(i)
            try:
                scan = source[i]
            except ScanReadError as error:
                report.skipped.append((where, error.reason))
                log.warning("skipping scan %s: %s", where, error.reason)
                continue
            if scan.labels is None:
                report.skipped.append((where, "no labels (give labels.label_field for bags)"))
                log.warning("skipping scan %s: no labels", where)
                continue
            classes = class_indices(scan.labels, class_map).astype(np.int32)
            report.scans.append(Scan(scan.points, scan.fields, scan.frame_id, scan.stamp_ns, classes,
                                     scan.intensity_scale, scan.source or where))
    if not report.scans:
        reasons = "; ".join(f"{w}: {r}" for w, r in report.skipped[:3])
        raise ConfigError(f"no labelled scan could be read ({len(report.skipped)} skipped: {reasons or 'no scans'})")
    if not any((s.labels >= 0).any() for s in report.scans):
        raise ConfigError(f"no point of the {len(report.scans)} scan(s) has a label in class map {class_map.name!r} "
                          f"(label space {class_map.label_space!r}): wrong --class-map?")
    return report


# --------------------------------------------------------------------------- limited-label selections


def choose_scans(n: int, k: int, seed: int) -> np.ndarray:
    """Indices of the ``k`` scans kept (all when k is 0 or >= n), seeded, in their original order."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0x5CA4]).permutation(n)[:k])


def select_points(points: np.ndarray, classes: np.ndarray, cfg: LabelConfig, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool: the labelled points whose labels train, under ``cfg.fraction`` / ``cfg.selection``.
    At least one labelled point is kept when the scan has any."""
    labelled = np.flatnonzero(classes >= 0)
    keep = np.zeros(len(classes), dtype=bool)
    if len(labelled) == 0:
        return keep
    budget = max(1, int(round(cfg.fraction * len(labelled))))
    if budget >= len(labelled):
        keep[labelled] = True
        return keep
    if cfg.selection == "random":
        keep[rng.choice(labelled, budget, replace=False)] = True
        return keep
    # blocks: squares centred on random labelled points, whole, until the budget is met; the last
    # block is trimmed to its points nearest the centre so the budget holds exactly
    xy = points[labelled, :2]
    free = np.ones(len(labelled), dtype=bool)
    half = cfg.block_size / 2
    chosen = 0
    while chosen < budget:
        centre = xy[rng.choice(np.flatnonzero(free))]
        inside = np.flatnonzero(free & np.all(np.abs(xy - centre) <= half, axis=1))
        if chosen + len(inside) > budget:
            dist = np.max(np.abs(xy[inside] - centre), axis=1)
            inside = inside[np.argsort(dist, kind="stable")[: budget - chosen]]
        keep[labelled[inside]] = True
        free[inside] = False
        chosen += len(inside)
    return keep


@dataclass
class Selection:
    scans: list[Scan]  # labels: class index where selected for training, IGNORE elsewhere
    record: dict  # what was selected, for OUT/labels.json and the checkpoint


def digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()[:16]


def select_labels(scans: Sequence[Scan], cfg: LabelConfig, num_classes: int,
                  exclude: Sequence[np.ndarray] | None = None) -> Selection:
    """Apply the limited-label options to the training scans. ``exclude``: per scan, points whose
    labels must not train (validation blocks). Seeded by ``cfg.seed`` (scan choice) and
    (seed, scan position) per scan."""
    chosen = choose_scans(len(scans), cfg.scans, cfg.seed)
    out, per_scan = [], []
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in chosen:
        scan = scans[i]
        classes = scan.labels.astype(np.int64)
        if exclude is not None:
            classes = np.where(exclude[i], IGNORE, classes)
        keep = select_points(scan.points, classes, cfg, np.random.default_rng([cfg.seed, int(i)]))
        train = np.where(keep, classes, IGNORE).astype(np.int32)
        counts += np.bincount(train[keep], minlength=num_classes)[:num_classes]
        out.append(Scan(scan.points, scan.fields, scan.frame_id, scan.stamp_ns, train, scan.intensity_scale, scan.source))
        per_scan.append({"scan": scan.source, "index": int(i), "labelled_points": int((classes >= 0).sum()),
                         "selected_points": int(keep.sum()), "selection_sha256": digest(keep)})
    if counts.sum() == 0:
        raise ConfigError("the label selection left no labelled training point (labels.fraction / scans / "
                          "validation split too strict, or no labels in the class map)")
    record = {"seed": cfg.seed, "scans_requested": cfg.scans, "fraction": cfg.fraction, "selection": cfg.selection,
              "block_size": cfg.block_size if cfg.selection == "blocks" else None,
              "scans_available": len(scans), "scans_used": len(out),
              "selected_points": int(counts.sum()), "class_counts": counts.tolist(), "per_scan": per_scan}
    return Selection(out, record)


class ScanList:
    """A list of in-memory scans as a ScanSource (``len``, ``[i]``, ``describe``)."""

    def __init__(self, scans: Sequence[Scan]) -> None:
        self.scans = list(scans)

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, index: int) -> Scan:
        return self.scans[index]

    def describe(self, index: int) -> str:
        return self.scans[index].source or f"scan #{index}"


__all__ = ["class_indices", "resolve_class_map", "open_labelled", "read_labelled", "ReadReport", "choose_scans",
           "select_points", "select_labels", "Selection", "ScanList", "RAW_SEMANTICKITTI"]
