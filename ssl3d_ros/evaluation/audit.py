"""``ssl3d-audit``: how much of an encoder's embedding is plain geometry.

For each encoder (one or more checkpoints, plus the same architecture with random weights and the
raw input features as references) the table gives how well ridge regression decodes from the frozen
per-point hypercolumn features:

- ``R² height``: z above the scan's ground level,
- ``R² normal``: the surface normal's axis (|n_x|, |n_y|, |n_z|),
- ``R² xyz``: the raw coordinates in the scan's frame (positional leakage),
- ``R² range``: log distance from the scan frame's origin (the sensor for sensor-frame scans): the
  range / point-density shortcut of spinning LiDARs,

next to the linear-probe mIoU on the same split (when the scans are labelled). High geometric R²
with low mIoU is the "geometric shortcut" (Sonata) / positional-leakage pattern: the self-supervised
objective was solved from where and how a point lies, not what it belongs to. All numbers are on
held-out points (the probe's spatial split) so a memorising regressor cannot inflate them.

Example::

    ssl3d-audit --checkpoint a.safetensors b.safetensors --sim outdoor --sim-scans 4 --out audit
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..cli import EXIT_CODES_EPILOG, console_script
from ..config import to_dict
from ..labels import ClassMap, SplitConfig, point_test_masks, segmentation_scores
from ..preprocessing import PreprocessConfig
from ..scan import Scan
from .features import extract_features
from .geometry_targets import ground_height, normal_target, sensor_range
from .probe import (RANDOM_INIT_SEED, add_data_arguments, load_encoder, load_scans, resolve_class_map,
                    split_config_from_args)
from .probes import LinearProbeConfig, train_linear_probe
from .report import fmt, markdown_table, write_json, write_markdown
from .ridge import RidgeConfig, ridge_r2

log = logging.getLogger(__name__)

TARGETS = ("height", "normal", "xyz", "range")


@dataclass
class AuditConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    max_points_per_scan: int = 20_000
    normal_neighbours: int = 16
    baselines: tuple[str, ...] = ("random", "raw")
    seed: int = 0


@dataclass
class AuditScan:
    """One scan's audited points (a seeded subset), their targets and split."""

    index: np.ndarray  # (n,) point indices into the scan
    targets: dict[str, np.ndarray]  # name -> (n, d)
    classes: np.ndarray | None  # (n,) class indices or None (unlabelled)
    test: np.ndarray  # (n,) bool


def prepare_scans(scans: Sequence[Scan], class_map: ClassMap | None, cfg: AuditConfig) -> list[AuditScan]:
    masks = point_test_masks([s.points for s in scans], cfg.split)
    rng = np.random.default_rng(cfg.seed)
    out = []
    for scan, test in zip(scans, masks):
        n = len(scan)
        index = np.sort(rng.choice(n, min(n, cfg.max_points_per_scan), replace=False))
        normals = normal_target(scan.points, scan.fields.get("normal"), cfg.normal_neighbours)
        targets = {
            "height": ground_height(scan.points)[index, None],
            "normal": normals[index],
            "xyz": scan.points[index].astype(np.float64),
            "range": sensor_range(scan.points[index])[:, None],
        }
        classes = None
        if class_map is not None and scan.labels is not None:
            classes = class_map.apply(scan.labels)[index]
        out.append(AuditScan(index, targets, classes, test[index]))
    return out


@dataclass
class AuditRow:
    encoder: str
    r2: dict[str, float]
    miou: float | None
    train_points: int
    test_points: int
    seconds: float


def audit_features(name: str, encoder: torch.nn.Module | None, pre_cfg: PreprocessConfig, kind: str,
                   scans: Sequence[Scan], prepared: Sequence[AuditScan], num_classes: int | None,
                   cfg: AuditConfig) -> AuditRow:
    """R² of every target and the probe mIoU from one feature set (``kind``: hypercolumn or raw)."""
    t0 = time.perf_counter()
    xs, tgts, cls, tests = [], {t: [] for t in TARGETS}, [], []
    for scan, prep in zip(scans, prepared):
        pf = extract_features(encoder, pre_cfg, scan, (kind,))[kind]
        row_of_point = np.full(len(scan), -1, dtype=np.int64)
        row_of_point[pf.index] = np.arange(len(pf.index))
        rows = row_of_point[prep.index]
        use = rows >= 0  # audited points the preprocessing kept
        xs.append(pf.feat[torch.from_numpy(rows[use])])
        for t in TARGETS:
            tgts[t].append(prep.targets[t][use])
        cls.append(prep.classes[use] if prep.classes is not None else None)
        tests.append(prep.test[use])
    x = torch.cat(xs)
    test = torch.from_numpy(np.concatenate(tests))
    r2 = {}
    for t in TARGETS:
        y = np.concatenate(tgts[t])
        r2[t], _ = ridge_r2(x[~test], y[~test.numpy()], x[test], y[test.numpy()], cfg.ridge)
    miou = None
    if num_classes is not None and all(c is not None for c in cls):
        y = np.concatenate(cls)
        tr, te = (~test.numpy()) & (y >= 0), test.numpy() & (y >= 0)
        if tr.any() and te.any():
            probe = train_linear_probe(x[torch.from_numpy(tr)], y[tr], num_classes, cfg.linear)
            miou = segmentation_scores(y[te], probe.predict(x[torch.from_numpy(te)]), num_classes).miou
    row = AuditRow(name, r2, miou, int((~test).sum()), int(test.sum()), time.perf_counter() - t0)
    log.info("%s: R² height %.3f normal %.3f xyz %.3f range %.3f mIoU %s", name, r2["height"], r2["normal"], r2["xyz"],
             r2["range"], fmt(miou))
    return row


def row_names(checkpoints: Sequence[str | Path]) -> list[str]:
    """Each checkpoint's file name, or its folder/file name where file names repeat (every run of
    ssl3d-pretrain writes an ``encoder.safetensors``)."""
    names = [Path(p).name for p in checkpoints]
    return [f"{Path(p).parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(checkpoints, names)]


def run_audit(checkpoints: Sequence[str | Path], scans: Sequence[Scan], class_map: ClassMap | None,
              cfg: AuditConfig) -> list[AuditRow]:
    prepared = prepare_scans(scans, class_map, cfg)
    k = class_map.num_classes if class_map is not None else None
    rows: list[AuditRow] = []
    first = None
    for path, name in zip(checkpoints, row_names(checkpoints)):
        encoder, factory, pre_cfg, _ = load_encoder(path)
        first = first or (factory, pre_cfg)
        rows.append(audit_features(name, encoder, pre_cfg, "hypercolumn", scans, prepared, k, cfg))
    if first is not None:
        factory, pre_cfg = first
        if "random" in cfg.baselines:
            torch.manual_seed(RANDOM_INIT_SEED + cfg.seed)  # never the checkpoint's own initialisation
            rows.append(audit_features("random init (same architecture)", factory().eval(), pre_cfg, "hypercolumn",
                                       scans, prepared, k, cfg))
        if "raw" in cfg.baselines:
            rows.append(audit_features("raw input features", None, pre_cfg, "raw", scans, prepared, k, cfg))
    return rows


def audit_report(rows: Sequence[AuditRow], cfg: AuditConfig, meta: dict) -> tuple[dict, str]:
    doc = {**meta, "split": cfg.split.describe(), "config": to_dict(cfg),
           "rows": [{"encoder": r.encoder, "r2": r.r2, "probe_miou": r.miou, "train_points": r.train_points,
                     "test_points": r.test_points, "seconds": round(r.seconds, 3)} for r in rows]}
    table = markdown_table(
        ["encoder", "R² height", "R² normal", "R² xyz", "R² range", "probe mIoU (%)", "test pts"],
        [[r.encoder, fmt(r.r2["height"]), fmt(r.r2["normal"]), fmt(r.r2["xyz"]), fmt(r.r2["range"]), fmt(r.miou, percent=True),
          str(r.test_points)] for r in rows])
    md = "\n".join([
        "# Shortcut audit", "",
        f"- data: {meta.get('inputs')}; {meta.get('scans')} scan(s)",
        f"- split: {cfg.split.describe()}",
        "- R²: ridge regression from the frozen per-point features to each target, on held-out points "
        "(1 = fully decodable, 0 = no better than the mean). Targets: height above the scan's 2nd-percentile z; "
        "surface normal axis |n| (kNN PCA); raw xyz in the scan frame; log range from the scan frame's origin "
        "(sensor-frame scans: the sensor; a range R² far above the random-init row means the features encode "
        "distance / point density rather than the surface).",
        "- Read: geometric R² near the raw-input row with mIoU near the random-init row means the embedding is "
        "mostly geometry; useful semantics show as mIoU well above both references.", "",
        table])
    return doc, md


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl3d-audit", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints, one row each")
    add_data_arguments(parser)
    parser.add_argument("--no-baselines", action="store_true", help="skip the random-init and raw-input rows")
    parser.add_argument("--out", default="audit_report")
    parser.add_argument("--threads", type=int, default=0)
    parser.set_defaults(max_points_per_scan=20_000)
    return parser


@console_script("ssl3d-audit")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    scans = load_scans(args.inputs, sim=args.sim, sim_scans=args.sim_scans, sim_seed=args.sim_seed,
                       label_field=args.label_field, max_scans=args.max_scans)
    labelled = all(s.labels is not None for s in scans)
    class_map = resolve_class_map(args.class_map, args.sim) if (labelled and (args.class_map or args.sim)) else None
    cfg = AuditConfig(
        split=split_config_from_args(args),
        ridge=RidgeConfig(seed=args.seed), linear=LinearProbeConfig(seed=args.seed),
        max_points_per_scan=args.max_points_per_scan, baselines=() if args.no_baselines else ("random", "raw"),
        seed=args.seed)
    rows = run_audit(args.checkpoint, scans, class_map, cfg)
    meta = {"checkpoints": list(args.checkpoint), "inputs": list(args.inputs) or [f"sim:{args.sim}"],
            "scans": len(scans), "class_map": class_map.name if class_map else None}
    doc, md = audit_report(rows, cfg, meta)
    out = Path(args.out)
    write_json(out / "audit.json", doc)
    write_markdown(out / "audit.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
