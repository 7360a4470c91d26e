"""``ssl3d-probe``: how much semantics a frozen encoder's features hold, on labelled scans.

Probes (on a frozen encoder): ``linear`` (softmax regression on the per-point hypercolumn, what the
node's head is), ``knn`` (cosine kNN vote on the hypercolumn) and ``multilevel`` (MSM's multi-level
probe: every level interpolated to the points, concatenated, linear). Baselines in the same report:
the same architecture with random weights (linear + kNN), a linear model on the raw input features,
and the encoder trained supervised end to end on the same train split (the upper reference).

The labelled scans, the frozen encoder and its features come from
:mod:`ssl3d_ros.evaluation.probe_data` (shared with ``ssl3d-audit``).

Example::

    ssl3d-probe --checkpoint model.safetensors --sim outdoor --sim-scans 6 --out probe_report
    ssl3d-probe --checkpoint model.safetensors ../shared/data/lidar/semantickitti/000700.points.npy \\
        --class-map semantickitti-learning --split block --block-size 10 --out probe_kitti \\
        --write-head model_with_head.safetensors
    ssl3d-probe --checkpoint model.safetensors train/000000.bin train/000001.bin --test-inputs test/000000.bin \
        --class-map semantickitti --out probe_files     # split by files: the inputs train, --test-inputs test
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..cli import EXIT_CODES_EPILOG, console_script
from ..config import to_dict
from ..labels import IGNORE, ClassMap, SegmentationScores, SplitConfig, segmentation_scores
from ..preprocessing import PreprocessConfig, collate, preprocess, unpool
from ..scan import Scan
# The scans, the encoder and their features; ssl3d-audit and the study import them from here too.
from .probe_data import (STUDY_SUPERVISED_STEPS, STUDY_THREADS, LabelledScans, add_data_arguments, gather_features,
                         label_scans, load_encoder, load_scans, load_train_test_scans, resolve_class_map,
                         split_config_from_args)
from .probes import KNNProbeConfig, LinearProbe, LinearProbeConfig, knn_predict, train_linear_probe
from .report import fmt, markdown_table, write_json, write_markdown

log = logging.getLogger(__name__)

PROBES = ("linear", "knn", "multilevel")
BASELINES = ("random", "raw", "supervised")
RANDOM_INIT_SEED = 7_919_000


@dataclass
class SupervisedConfig:
    steps: int = STUDY_SUPERVISED_STEPS  # optimiser steps, one train scan per step (cycled)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class ProbeConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KNNProbeConfig = field(default_factory=KNNProbeConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    probes: tuple[str, ...] = PROBES
    baselines: tuple[str, ...] = BASELINES
    max_points_per_scan: int = 40_000  # labelled points kept per scan (seeded random subset)
    seed: int = 0


# --------------------------------------------------------------------------- supervised reference


def train_supervised(encoder: torch.nn.Module, data: LabelledScans, pre_cfg: PreprocessConfig,
                     cfg: SupervisedConfig, in_hyper: int) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """Encoder + linear head trained end to end on the train points only (cross-entropy), the scans
    cycled one per step. The encoder sees whole scans (as the frozen probes do); test points give no
    gradient."""
    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(in_hyper, data.class_map.num_classes)
    voxels = [preprocess(s, pre_cfg) for s in data.scans]
    targets = []
    for vox, cls, test, keep in zip(voxels, data.classes, data.test_masks, data.keep):
        y = np.where(keep & ~test, cls, IGNORE)
        y[~np.asarray(vox.point_valid)] = IGNORE
        targets.append(torch.from_numpy(y))
    usable = [i for i, t in enumerate(targets) if (t >= 0).any()]
    if not usable:
        raise ValueError("no train points for the supervised reference")
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    encoder.train()
    for step in range(cfg.steps):
        i = usable[step % len(usable)]
        vox, y = voxels[i], targets[i]
        out = encoder(collate([vox]))
        logits = unpool(head(encoder.hypercolumn(out)), vox.point_voxel.clamp_min(0))
        loss = F.cross_entropy(logits, y.long(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == cfg.steps - 1:
            log.info("supervised reference step %d/%d loss %.3f", step + 1, cfg.steps, loss.item())
    encoder.eval()
    return encoder, head


@torch.no_grad()
def supervised_point_predictions(encoder: torch.nn.Module, head: torch.nn.Linear, scan: Scan,
                                 pre_cfg: PreprocessConfig) -> np.ndarray:
    """(N,) int64 class of every input point of ``scan``; -1 for points the preprocessing dropped."""
    vox = preprocess(scan, pre_cfg)
    logits = unpool(head(encoder.hypercolumn(encoder(collate([vox])))), vox.point_voxel)
    return np.where(np.asarray(vox.point_valid), logits.argmax(1).numpy(), -1)


def supervised_predictions(encoder: torch.nn.Module, head: torch.nn.Linear, data: LabelledScans,
                           pre_cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Truth and prediction of the labelled test points that preprocessing kept (the same points the
    frozen probes are scored on)."""
    truth, pred = [], []
    for scan, cls, test, keep in zip(data.scans, data.classes, data.test_masks, data.keep):
        p = supervised_point_predictions(encoder, head, scan, pre_cfg)
        sel = keep & test & (p >= 0)  # the frozen probes' test points: labelled, kept by preprocessing
        truth.append(cls[sel])
        pred.append(p[sel])
    return np.concatenate(truth), np.concatenate(pred)


# --------------------------------------------------------------------------- the whole evaluation


@dataclass
class ProbeResult:
    encoder: str  # "checkpoint", "random init", "raw input", "supervised"
    probe: str  # "linear", "knn k=10", "multilevel linear", "end-to-end"
    scores: SegmentationScores
    train_points: int  # the train points the probe fits (the linear probe and the kNN bank subsample)
    train_labelled: int  # the labelled train points there were
    test_points: int
    seconds: float


def _scored(encoder: str, probe: str, truth: np.ndarray, pred: np.ndarray, num_classes: int,
            train_labelled: int, t0: float, limit: int | None = None) -> ProbeResult:
    """``limit``: the most train points the probe fits (its seeded subsample); None: all of them."""
    fitted = train_labelled if limit is None else min(train_labelled, limit)
    result = ProbeResult(encoder, probe, segmentation_scores(truth, pred, num_classes), fitted, train_labelled,
                         len(truth), time.perf_counter() - t0)
    log.info("%-12s %-20s mIoU %.3f acc %.3f (%.1f s)", encoder, probe, result.scores.miou,
             result.scores.accuracy, result.seconds)
    return result


def run_probes(encoder: torch.nn.Module, encoder_factory, pre_cfg: PreprocessConfig, data: LabelledScans,
               cfg: ProbeConfig) -> tuple[list[ProbeResult], LinearProbe | None]:
    """All probes and baselines; returns the results and the pretrained linear probe (for --write-head).

    ``encoder_factory()`` builds a freshly initialised encoder of the same architecture (random
    baseline and supervised reference)."""
    k = data.class_map.num_classes
    results: list[ProbeResult] = []
    kinds = tuple(sorted({"hypercolumn"} | ({"multilevel"} if "multilevel" in cfg.probes else set())
                         | ({"raw"} if "raw" in cfg.baselines else set())))
    fit, bank = cfg.linear.max_train_points, cfg.knn.max_bank_points  # what the linear probes and kNN subsample to
    encoder.eval()
    feats = gather_features(data, encoder, pre_cfg, kinds)
    linear_probe = None
    hyper = feats["hypercolumn"]
    # Chance reference: always answer the most frequent train class.
    majority = int(np.bincount(hyper.train_y, minlength=k).argmax())
    results.append(_scored("none", "majority class", hyper.test_y, np.full(len(hyper.test_y), majority), k,
                           len(hyper.train_y), time.perf_counter()))
    if "linear" in cfg.probes:
        t0 = time.perf_counter()
        linear_probe = train_linear_probe(hyper.train_x, hyper.train_y, k, cfg.linear)
        results.append(_scored("checkpoint", "linear", hyper.test_y, linear_probe.predict(hyper.test_x), k,
                               len(hyper.train_y), t0, fit))
    if "knn" in cfg.probes:
        t0 = time.perf_counter()
        pred = knn_predict(hyper.train_x, hyper.train_y, hyper.test_x, k, cfg.knn)
        results.append(_scored("checkpoint", f"knn k={cfg.knn.k}", hyper.test_y, pred, k, len(hyper.train_y), t0, bank))
    if "multilevel" in cfg.probes:
        t0 = time.perf_counter()
        ml = feats["multilevel"]
        probe = train_linear_probe(ml.train_x, ml.train_y, k, cfg.linear)
        results.append(_scored("checkpoint", "multilevel linear", ml.test_y, probe.predict(ml.test_x), k,
                               len(ml.train_y), t0, fit))
    if "raw" in cfg.baselines:
        t0 = time.perf_counter()
        raw = feats["raw"]
        probe = train_linear_probe(raw.train_x, raw.train_y, k, cfg.linear)
        results.append(_scored("raw input", "linear", raw.test_y, probe.predict(raw.test_x), k, len(raw.train_y), t0,
                               fit))
    del feats
    if "random" in cfg.baselines:
        # A seed unlike any training run's, so "random init" is never the checkpoint's own init.
        torch.manual_seed(RANDOM_INIT_SEED + cfg.seed)
        random_encoder = encoder_factory().eval()
        rnd = gather_features(data, random_encoder, pre_cfg, ("hypercolumn",))["hypercolumn"]
        t0 = time.perf_counter()
        probe = train_linear_probe(rnd.train_x, rnd.train_y, k, cfg.linear)
        results.append(_scored("random init", "linear", rnd.test_y, probe.predict(rnd.test_x), k, len(rnd.train_y), t0,
                               fit))
        if "knn" in cfg.probes:
            t0 = time.perf_counter()
            pred = knn_predict(rnd.train_x, rnd.train_y, rnd.test_x, k, cfg.knn)
            results.append(_scored("random init", f"knn k={cfg.knn.k}", rnd.test_y, pred, k, len(rnd.train_y), t0,
                                   bank))
        del rnd, random_encoder
    if "supervised" in cfg.baselines:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.supervised.seed)
        sup = encoder_factory()
        c_total = hyper.train_x.shape[1]
        sup, head = train_supervised(sup, data, pre_cfg, cfg.supervised, c_total)
        truth, pred = supervised_predictions(sup, head, data, pre_cfg)
        results.append(_scored("supervised", f"end-to-end, {cfg.supervised.steps} steps", truth, pred, k,
                               len(hyper.train_y), t0))
    return results, linear_probe


# --------------------------------------------------------------------------- report


def probe_report(results: list[ProbeResult], data: LabelledScans, cfg: ProbeConfig, meta: dict) -> tuple[dict, str]:
    names = data.class_map.class_names
    doc = {
        **meta,
        "class_map": data.class_map.name,
        "label_space": data.class_map.label_space,
        "split": cfg.split.describe(),
        "config": to_dict(cfg),
        "scans": [s.source for s in data.scans],
        # the scans with train points, and with test points (all of them under a spatial split)
        "train_scans": [s.source for s, test in zip(data.scans, data.test_masks) if not test.all()],
        "test_scans": [s.source for s, test in zip(data.scans, data.test_masks) if test.any()],
        "results": [
            {"encoder": r.encoder, "probe": r.probe, "train_points": r.train_points, "train_labelled": r.train_labelled,
             "test_points": r.test_points, "seconds": round(r.seconds, 3), **r.scores.to_dict(names)}
            for r in results
        ],
    }
    by_scan = ([f"- train scans: {', '.join(map(str, doc['train_scans']))}",
                f"- test scans: {', '.join(map(str, doc['test_scans']))}"] if cfg.split.kind in ("scans", "files") else [])
    lines = [f"# Probe report: {meta.get('checkpoint', '')}", "",
             f"- data: {len(data.scans)} scan(s); class map `{data.class_map.name}` ({data.class_map.num_classes} classes)",
             f"- split: {cfg.split.describe()}", *by_scan,
             "- rows: `majority class` is chance (always the most frequent train class); `random init` is the "
             "same architecture untrained; `raw input` a linear model on the encoder's input features; "
             "`supervised` the same architecture trained end to end on the train split (upper reference)",
             f"- train pts: the points a probe fits (linear: a seeded subsample of at most {cfg.linear.max_train_points:,}; "
             f"kNN: a bank of at most {cfg.knn.max_bank_points:,}) of the labelled train points", "",
             "## Summary (test points; mIoU, accuracy, mean class accuracy in %)", "",
             markdown_table(["encoder", "probe", "mIoU", "acc", "mAcc", "train pts", "labelled train pts", "test pts"],
                            [[r.encoder, r.probe, fmt(r.scores.miou, percent=True), fmt(r.scores.accuracy, percent=True),
                              fmt(r.scores.mean_accuracy, percent=True), f"{r.train_points:,}", f"{r.train_labelled:,}",
                              f"{r.test_points:,}"]
                             for r in results]),
             "", "## Per-class IoU (%)", "",
             markdown_table(["class", "test pts"] + [f"{r.encoder} / {r.probe}" for r in results],
                            [[n, str(int(results[0].scores.support[i])) if results else "0"]
                             + [fmt(r.scores.iou[i], percent=True) for r in results] for i, n in enumerate(names)])]
    main = [r for r in results if r.encoder == "checkpoint"]
    if main:
        best = main[0]
        lines += ["", f"## Confusion matrix ({best.encoder} / {best.probe}; rows truth, columns prediction)", "",
                  markdown_table([""] + names, [[n] + [str(int(v)) for v in row] for n, row in zip(names, best.scores.confusion)])]
    return doc, "\n".join(lines)


# --------------------------------------------------------------------------- writing the head


def write_head(checkpoint: str | Path, out_path: str | Path, probe: LinearProbe, class_map: ClassMap,
               pca_features: torch.Tensor | None = None, pca_dims: int = 0) -> Path:
    """The pretrained linear probe (standardisation folded in) as the checkpoint's segmentation head,
    and with ``pca_dims`` > 0 a PCA basis of ``pca_features`` (hypercolumns) for the node's reduced
    embeddings (``embeddings.dims``)."""
    from ..checkpoint import ClassInfo, add_heads
    from ..models.heads import LinearSegHead, PCAProjection

    weight, bias = probe.folded()
    head = LinearSegHead(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    classes = ClassInfo(names=list(class_map.class_names),
                        colors=[tuple(int(c) for c in col) for col in class_map.colors])
    pca = None
    if pca_dims > 0 and pca_features is not None:
        pca = PCAProjection.fit(pca_features.float(), pca_dims, generator=torch.Generator().manual_seed(0))
    return Path(add_heads(checkpoint, out_path, seg_head=head, classes=classes, pca=pca))


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl3d-probe", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    add_data_arguments(parser, test_inputs=True)
    parser.add_argument("--probes", nargs="+", choices=PROBES, default=list(PROBES))
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES))
    parser.add_argument("--knn-k", type=int, default=10)
    parser.add_argument("--linear-iters", type=int, default=100)
    parser.add_argument("--class-balanced", action="store_true")
    parser.add_argument("--supervised-steps", type=int, default=STUDY_SUPERVISED_STEPS,
                        help="steps of the supervised reference (default %(default)s, as the study)")
    parser.add_argument("--out", default="probe_report", help="output folder (report.json, report.md)")
    parser.add_argument("--write-head", metavar="OUT.safetensors",
                        help="write the checkpoint with the pretrained linear probe as its segmentation head")
    parser.add_argument("--pca-dims", type=int, default=0, metavar="K",
                        help="with --write-head: also store a K-component PCA basis of the training points' "
                             "hypercolumns, for the node's reduced embeddings (embeddings.dims); 0: none")
    parser.add_argument("--threads", type=int, default=STUDY_THREADS,
                        help="torch CPU threads (default %(default)s, as the study: reproducible run to run, since "
                             "spconv's CPU kernels race with more threads; 0: torch's default, faster)")
    return parser


def config_from_args(args: argparse.Namespace) -> ProbeConfig:
    return ProbeConfig(
        split=split_config_from_args(args),
        linear=LinearProbeConfig(max_iter=getattr(args, "linear_iters", 100),
                                 class_balanced=getattr(args, "class_balanced", False), seed=args.seed),
        knn=KNNProbeConfig(k=getattr(args, "knn_k", 10), seed=args.seed),
        supervised=SupervisedConfig(steps=getattr(args, "supervised_steps", STUDY_SUPERVISED_STEPS), seed=args.seed),
        probes=tuple(getattr(args, "probes", PROBES)),
        baselines=tuple(getattr(args, "baselines", BASELINES)),
        max_points_per_scan=args.max_points_per_scan,
        seed=args.seed,
    )



@console_script("ssl3d-probe")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    class_map = resolve_class_map(args.class_map, args.sim)
    scans, test_scans = load_train_test_scans(args)
    if args.with_xyz_only_copies:
        copied = [i for i, s in enumerate(scans) if "intensity" in s.fields]
        scans += [dataclasses.replace(scans[i], fields={**scans[i].fields, "intensity": np.zeros(len(scans[i]), np.float32)},
                                      intensity_scale=1.0, source=f"{scans[i].source} (intensity zeroed)") for i in copied]
        test_scans = None if test_scans is None else test_scans + [test_scans[i] for i in copied]
    if cfg.split.kind == "scans" and len(scans) < 2:
        raise SystemExit("--split scans needs at least 2 scans")
    encoder, factory, pre_cfg, _ = load_encoder(args.checkpoint)
    data = label_scans(scans, class_map, cfg.split, cfg.max_points_per_scan, cfg.seed, test_scans)
    results, linear_probe = run_probes(encoder, factory, pre_cfg, data, cfg)
    meta = {"checkpoint": str(args.checkpoint), "inputs": list(args.inputs) or [f"sim:{args.sim}"],
            "test_inputs": list(args.test_inputs or [])}
    doc, md = probe_report(results, data, cfg, meta)
    out = Path(args.out)
    write_json(out / "report.json", doc)
    write_markdown(out / "report.md", md)
    print(md)
    if args.write_head:
        if linear_probe is None:
            raise SystemExit("--write-head needs the linear probe (add 'linear' to --probes)")
        pca_features = None
        if args.pca_dims > 0:
            pca_features = gather_features(data, encoder, pre_cfg, ("hypercolumn",))["hypercolumn"].train_x
        path = write_head(args.checkpoint, args.write_head, linear_probe, class_map, pca_features, args.pca_dims)
        pca = f" and a {args.pca_dims}-component PCA basis" if args.pca_dims > 0 else ""
        print(f"wrote {path} with a {class_map.num_classes}-class linear head{pca}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
