#!/usr/bin/env python3
"""The real-data study (issue 7, results part): pretrain every recipe on the unlabelled real scans
of ``../shared/data`` under one budget, probe the frozen encoders on the labelled real scans
(SemanticKITTI 000700, ScanNet scene0000_00) against random-init / raw-input / supervised
baselines, test robustness (half the beams, range noise), run the shortcut audit, and write
``study.json`` + ``study.md`` (mean ± std over seeds) into the output folder.

Every piece (one pretraining run, one probe of one encoder on one scan, one audit row) is cached as
a file in the output folder, so a stopped run continues where it stopped (pretraining itself resumes
from its last checkpoint) and a re-run with more seeds or recipes only computes what is missing.

    python scripts/real_data_study.py --out runs/real_study                    # the whole study
    python scripts/real_data_study.py --out runs/real_study --seeds 0 1 2 3    # one more seed
    python scripts/real_data_study.py --out runs/real_study --report-only      # tables from the cache
    python scripts/real_data_study.py --out runs/real_study \
        --variant 'jepa-fine=jepa:recipe.patch_size=0.8;recipe.level=-2'       # a recipe variant, same budget
    python scripts/real_data_study.py --out runs/long --recipes sonata --steps 900 --no-baselines \
        --baselines-from runs/real_study                                       # another budget, own folder

Budget flags (--steps, --batch-size, --crop-points, --supervised-steps, ...) must be repeated on every
call for one folder: the folder records its budget and refuses another one.

Pretraining data: ``lidar/ouster`` (10 scans), ``lidar/kitti`` (2), ``lidar/nuscenes`` (1); never the
probed SemanticKITTI / ScanNet scans. Input features are geometry only (``--features``, default ``xyz``
``height``): the SemanticKITTI ``.npy`` has no intensity and ScanNet has none either, so an intensity
channel would be zeros at probe time on both (a domain shift), and rgb exists only indoors.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = (REPO / ".." / "shared" / "data").resolve()
RECIPES = ("sonata", "msm", "jepa", "mae", "acl")
PRETRAIN_SOURCES = ("lidar/ouster", "lidar/kitti", "lidar/nuscenes")

# The labelled scans: path, labels, class map, spatial split block size, robustness transforms.
DATASETS = {
    "semantickitti": dict(path="lidar/semantickitti/000700.points.npy", class_map="semantickitti-learning",
                          block_size=10.0, lidar=True, title="SemanticKITTI 000700 (LiDAR, outdoor)"),
    "scannet": dict(path="indoor/scannet/scene0000_00_vert_all.npy", class_map="scannet20",
                    block_size=1.5, lidar=False, title="ScanNet scene0000_00 (RGB-D mesh, indoor)"),
}
#: input features of study folders written before --features existed (and the default)
XYZ_FEATURES = ["xyz", "height"]
TEST_FRACTION = 0.3
SPLIT_SEED = 0  # one fixed split: every row and seed is scored on the same test points
LIDAR_BEAMS = 64  # HDL-64E
RANGE_NOISE_LIDAR = 0.10  # m, std of the noise along the sensor ray (SemanticKITTI)
NOISE_INDOOR = 0.05  # m, per-axis std of isotropic noise (ScanNet: a fused mesh has no single ray origin)

log = logging.getLogger("real_data_study")


# --------------------------------------------------------------------------- small helpers


def atomic_json(path: Path, doc) -> None:
    from ssl3d_ros.evaluation.report import _plain

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_plain(doc), indent=2) + "\n")
    os.replace(tmp, path)


def load_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def mean_std(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


# --------------------------------------------------------------------------- pretraining


def pretrain_config(recipe: str, args, variant: str | None = None) -> dict:
    """The recipe's shipped config with the study's data, features and budget."""
    import yaml

    from ssl3d_ros.config import set_dotted

    cfg = yaml.safe_load((REPO / "config" / "pretrain" / f"{recipe}.yaml").read_text())
    cfg["data"] = {"sources": [str(DATA / s) for s in PRETRAIN_SOURCES], "topics": []}
    pre = cfg["preprocessing"]
    pre["features"] = list(args.features)
    pre["max_range"] = None  # SemanticKITTI 000700 is in a world frame: a range limit around the origin would cut it
    pre["xyz_center"] = "mean"  # translation invariant (sensor-frame pretraining scans, world-frame probe scan)
    # One crop size: every scene-level view holds at most args.crop_points points (sonata's local views
    # keep their own smaller crops; they are part of that recipe).
    views = cfg["recipe"]["views"] if "views" in cfg["recipe"] else cfg["recipe"]["base_config"]["views"]
    for name, view in views.items():
        if name != "local":
            view["crop_points"] = args.crop_points
    for assignment in args.recipe_override.get(variant or recipe, []):
        set_dotted(cfg, assignment)
    cfg["run"].update(steps=args.steps, batch_size=args.batch_size, threads=args.threads, workers=0,
                      checkpoint_every=max(50, args.steps // 4), tensorboard=False)
    return cfg


def run_pretraining(recipe: str, variant: str, seed: int, args) -> Path:
    """OUT/pretrain/<variant>-s<seed>/encoder.safetensors, trained unless already there."""
    import yaml

    run_dir = args.out / "pretrain" / f"{variant}-s{seed}"
    encoder = run_dir / "encoder.safetensors"
    if encoder.exists():
        return encoder
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = pretrain_config(recipe, args, variant)
    cfg["run"].update(seed=seed, out_dir=str(run_dir))
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "ssl3d_ros.training.pretrain", "--config", str(config_path), "--no-progress"]
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        cmd.append("--resume")
    log.info("pretraining %s seed %d: %s", variant, seed, " ".join(cmd))
    t0 = time.perf_counter()
    with open(run_dir / "pretrain.log", "a") as logf:
        rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    if rc != 0 or not encoder.exists():
        raise RuntimeError(f"pretraining {variant} seed {seed} failed (exit {rc}); see {run_dir / 'pretrain.log'}")
    prev = load_json(run_dir / "timing.json") or {"seconds": 0.0}
    atomic_json(run_dir / "timing.json", {"seconds": prev["seconds"] + time.perf_counter() - t0,
                                          "steps": args.steps, "batch_size": args.batch_size,
                                          "crop_points": args.crop_points, "threads": args.threads})
    return encoder


# --------------------------------------------------------------------------- robustness transforms


def estimate_sensor_origin(points: np.ndarray) -> np.ndarray:
    """Sensor position of a single world-frame spinning-LiDAR scan: the centre of the empty disc the
    ego vehicle leaves in the densest region (searched within 8 m of the xy density peak), at the
    ground level there + 1.73 m (KITTI's sensor height)."""
    from scipy.spatial import cKDTree

    xy = points[:, :2].astype(np.float64)
    lo = np.floor(xy.min(0))
    cells = np.floor(xy - lo).astype(np.int64)
    counts = np.zeros(cells.max(0) + 1, dtype=np.int64)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    peak = lo + np.array(np.unravel_index(counts.argmax(), counts.shape)) + 0.5
    g = np.arange(-8.0, 8.01, 0.25)
    cand = peak + np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    dist, _ = cKDTree(xy).query(cand)
    centre = cand[dist.argmax()]
    near = np.hypot(*(xy - centre).T) < 10.0
    ground = np.percentile(points[near, 2], 5) if near.any() else np.percentile(points[:, 2], 5)
    return np.array([centre[0], centre[1], ground + 1.73])


def perturb(scan, kind: str, lidar: bool, seed: int):
    """(perturbed scan, index of each of its points in the original scan)."""
    rng = np.random.default_rng(10_000 + seed)
    n = len(scan)
    if kind == "half_beams":
        if lidar:
            rel = scan.points - estimate_sensor_origin(scan.points)
            elev = np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1]) + 1e-6)
            lo, hi = np.percentile(elev, 0.1), np.percentile(elev, 99.9)
            beam = np.clip(np.floor((elev - lo) / (hi - lo) * LIDAR_BEAMS), 0, LIDAR_BEAMS - 1).astype(np.int64)
            index = np.flatnonzero(beam % 2 == 0)
        else:  # no beams in a fused RGB-D mesh: keep a random half of the points
            index = np.sort(rng.choice(n, n // 2, replace=False))
        return scan.select(index), index
    if kind == "range_noise":
        pts = scan.points.astype(np.float64)
        if lidar:
            origin = estimate_sensor_origin(scan.points)
            ray = pts - origin
            r = np.linalg.norm(ray, axis=1, keepdims=True)
            pts = origin + ray / np.maximum(r, 1e-6) * (r + rng.normal(0, RANGE_NOISE_LIDAR, (n, 1)))
        else:
            pts = pts + rng.normal(0, NOISE_INDOOR, pts.shape)
        noisy = dataclasses.replace(scan, points=pts.astype(np.float32))
        return noisy, np.arange(n)
    raise ValueError(kind)


PERTURBATIONS = ("half_beams", "range_noise")


# --------------------------------------------------------------------------- probing one encoder


class Dataset:
    def __init__(self, name: str, max_points: int):
        from ssl3d_ros.evaluation.class_maps import load_class_map
        from ssl3d_ros.evaluation.splits import SplitConfig, point_test_masks
        from ssl3d_ros.io import open_source

        spec = DATASETS[name]
        self.name, self.spec = name, spec
        self.scan = open_source(str(DATA / spec["path"]))[0]
        self.class_map = load_class_map(spec["class_map"])
        self.split = SplitConfig(kind="block", block_size=spec["block_size"], test_fraction=TEST_FRACTION,
                                 seed=SPLIT_SEED)
        self.test = point_test_masks([self.scan.points], self.split)[0]
        self.classes = self.class_map.apply(self.scan.labels)
        self.max_points = max_points
        self.perturbed = {k: perturb(self.scan, k, spec["lidar"], SPLIT_SEED) for k in PERTURBATIONS}

    def keep(self, seed: int) -> np.ndarray:
        """Labelled points used (a seeded subset of at most max_points)."""
        labelled = np.flatnonzero(self.classes >= 0)
        if len(labelled) > self.max_points:
            labelled = np.random.default_rng(seed).choice(labelled, self.max_points, replace=False)
        k = np.zeros(len(self.scan), dtype=bool)
        k[labelled] = True
        return k


def _miou(truth, pred, k):
    from ssl3d_ros.evaluation.metrics import segmentation_scores

    s = segmentation_scores(truth, pred, k)
    return float(s.miou), float(s.accuracy)


def probe_frozen(ds: Dataset, encoder, pre_cfg, kind: str, seed: int, args, knn: bool = True) -> dict:
    """Linear (+ kNN) probe on the clean train split, scored on the clean test split and on the
    perturbed scans' test points (each drop measured against the clean prediction of the same points)."""
    import torch

    from ssl3d_ros.evaluation.features import extract_features
    from ssl3d_ros.evaluation.probes import KNNProbeConfig, LinearProbeConfig, knn_predict, train_linear_probe

    k = ds.class_map.num_classes
    keep = ds.keep(seed)
    pf = extract_features(encoder, pre_cfg, ds.scan, (kind,))[kind]
    idx = pf.index
    tr = keep[idx] & ~ds.test[idx]
    te = keep[idx] & ds.test[idx]
    x = pf.feat
    out = {"train_points": int(tr.sum()), "test_points": int(te.sum()), "feature_dim": int(x.shape[1])}
    t0 = time.perf_counter()
    probe = train_linear_probe(x[torch.from_numpy(tr)], ds.classes[idx[tr]], k,
                               LinearProbeConfig(max_iter=args.linear_iters, seed=seed))
    clean_pred = np.full(len(ds.scan), -1, dtype=np.int64)
    clean_pred[idx] = probe.predict(x)
    out["linear"] = _miou(ds.classes[idx[te]], clean_pred[idx[te]], k)
    out["linear_seconds"] = time.perf_counter() - t0
    if knn:
        t0 = time.perf_counter()
        pred = knn_predict(x[torch.from_numpy(tr)], ds.classes[idx[tr]], x[torch.from_numpy(te)], k,
                           KNNProbeConfig(k=args.knn_k, seed=seed))
        out["knn"] = _miou(ds.classes[idx[te]], pred, k)
        out["knn_seconds"] = time.perf_counter() - t0
    for name, (pscan, orig) in ds.perturbed.items():
        ppf = extract_features(encoder, pre_cfg, pscan, (kind,))[kind]
        o = orig[ppf.index]
        sel = keep[o] & ds.test[o]
        truth = ds.classes[o[sel]]
        pred = probe.predict(ppf.feat[torch.from_numpy(sel)])
        clean_same = clean_pred[o[sel]]
        ok = clean_same >= 0  # points the clean preprocessing kept too
        out[name] = {"miou": _miou(truth, pred, k)[0], "clean_same_points": _miou(truth[ok], clean_same[ok], k)[0],
                     "test_points": int(sel.sum())}
        out[name]["drop"] = out[name]["clean_same_points"] - out[name]["miou"]
    return out


def probe_supervised(ds: Dataset, factory, pre_cfg, seed: int, args) -> dict:
    """The same architecture trained end to end on the clean train split (upper reference), scored
    like the frozen probes (clean test split, perturbed scans)."""
    import torch

    from ssl3d_ros.evaluation.probe import LabelledScans, SupervisedConfig, train_supervised
    from ssl3d_ros.preprocessing import collate, preprocess

    k = ds.class_map.num_classes
    keep = ds.keep(seed)
    data = LabelledScans([ds.scan], [ds.classes], [ds.test], ds.class_map, [keep])
    torch.manual_seed(seed)
    enc = factory()
    with torch.no_grad():
        c_total = enc.hypercolumn(enc(collate([preprocess(ds.scan, pre_cfg)]))).shape[1]
    t0 = time.perf_counter()
    enc, head = train_supervised(enc, data, pre_cfg, SupervisedConfig(steps=args.supervised_steps, seed=seed), c_total)
    seconds = time.perf_counter() - t0

    @torch.no_grad()
    def predict(scan):
        vox = preprocess(scan, pre_cfg)
        voxel_class = head(enc.hypercolumn(enc(collate([vox])))).argmax(1).numpy()
        pv = np.asarray(vox.point_voxel)
        return np.where(pv >= 0, voxel_class[np.clip(pv, 0, None)], -1)

    clean_pred = predict(ds.scan)
    te = keep & ds.test & (clean_pred >= 0)
    out = {"linear": _miou(ds.classes[te], clean_pred[te], k), "train_seconds": seconds,
           "steps": args.supervised_steps, "test_points": int(te.sum())}
    for name, (pscan, orig) in ds.perturbed.items():
        pred = predict(pscan)
        sel = keep[orig] & ds.test[orig] & (pred >= 0)
        truth = ds.classes[orig[sel]]
        clean_same = clean_pred[orig[sel]]
        ok = clean_same >= 0
        out[name] = {"miou": _miou(truth, pred[sel], k)[0], "clean_same_points": _miou(truth[ok], clean_same[ok], k)[0],
                     "test_points": int(sel.sum())}
        out[name]["drop"] = out[name]["clean_same_points"] - out[name]["miou"]
    return out


def audit_row(ds: Dataset, encoder, pre_cfg, kind: str, seed: int) -> dict:
    from ssl3d_ros.evaluation.audit import AuditConfig, audit_features, prepare_scans
    from ssl3d_ros.evaluation.probes import LinearProbeConfig
    from ssl3d_ros.evaluation.ridge import RidgeConfig

    cfg = AuditConfig(split=ds.split, ridge=RidgeConfig(seed=seed), linear=LinearProbeConfig(seed=seed),
                      max_points_per_scan=20_000, seed=seed)
    prepared = prepare_scans([ds.scan], ds.class_map, cfg)
    row = audit_features(kind, encoder, pre_cfg, kind, [ds.scan], prepared, ds.class_map.num_classes, cfg)
    return {"r2": row.r2, "miou": row.miou, "test_points": row.test_points, "seconds": row.seconds}


# --------------------------------------------------------------------------- the study


def cached(path: Path, fn):
    doc = load_json(path)
    if doc is not None:
        return doc
    t0 = time.perf_counter()
    doc = fn()
    doc["wall_seconds"] = time.perf_counter() - t0
    atomic_json(path, doc)
    log.info("wrote %s (%.1f s)", path, doc["wall_seconds"])
    return doc


def run_seed(seed: int, variants: dict[str, str], datasets: dict[str, Dataset], args) -> None:
    import torch

    from ssl3d_ros.evaluation.probe import RANDOM_INIT_SEED, load_encoder

    factory = pre_cfg = None
    for variant, recipe in variants.items():
        ckpt = run_pretraining(recipe, variant, seed, args)
        encoder, factory, pre_cfg, _ = load_encoder(ckpt)
        for name, ds in datasets.items():
            cached(args.out / "probe" / name / f"{variant}-s{seed}.json",
                   lambda: probe_frozen(ds, encoder, pre_cfg, "hypercolumn", seed, args))
            if not args.no_audit:
                cached(args.out / "audit" / name / f"{variant}-s{seed}.json",
                       lambda: audit_row(ds, encoder, pre_cfg, "hypercolumn", seed))
    if factory is None or args.no_baselines:
        return
    for name, ds in datasets.items():
        torch.manual_seed(RANDOM_INIT_SEED + seed)
        rnd = factory().eval()
        cached(args.out / "probe" / name / f"random-s{seed}.json",
               lambda: probe_frozen(ds, rnd, pre_cfg, "hypercolumn", seed, args))
        if not args.no_audit:
            cached(args.out / "audit" / name / f"random-s{seed}.json",
                   lambda: audit_row(ds, rnd, pre_cfg, "hypercolumn", seed))
        cached(args.out / "probe" / name / f"raw-s{seed}.json",
               lambda: probe_frozen(ds, None, pre_cfg, "raw", seed, args, knn=True))
        if not args.no_audit and seed == args.seeds[0]:
            cached(args.out / "audit" / name / f"raw-s{seed}.json", lambda: audit_row(ds, None, pre_cfg, "raw", seed))
        if args.supervised_steps > 0:
            cached(args.out / "probe" / name / f"supervised-s{seed}.json",
                   lambda: probe_supervised(ds, factory, pre_cfg, seed, args))


# --------------------------------------------------------------------------- report


def pm(m, s, n, percent=True):
    if m is None:
        return "–"
    f = 100 if percent else 1
    digits = 1 if percent else 3
    return f"{f * m:.{digits}f} ± {f * s:.{digits}f}" + ("" if n >= 3 else f" (n={n})")


def piece(args, kind: str, name: str, row: str, seed: int):
    """A cached probe/audit piece; baseline rows come from --baselines-from when given."""
    base = args.baselines_from if (args.baselines_from and row in ("random", "raw", "supervised")) else args.out
    return load_json(base / kind / name / f"{row}-s{seed}.json")


def collect(args) -> tuple[dict, str]:
    rows_order = [v for v in args.variant_names] + ["random", "raw", "supervised"]
    labels = {"random": "random init (same encoder)", "raw": "raw input features (linear)",
              "supervised": f"supervised end-to-end ({args.supervised_steps} steps, upper ref.)"}
    doc = {"budget": {"steps": args.steps, "batch_size": args.batch_size, "crop_points": args.crop_points,
                      "threads": args.threads, "pretrain_sources": list(PRETRAIN_SOURCES)},
           "split": {n: f"block {DATASETS[n]['block_size']} m, test fraction {TEST_FRACTION}, seed {SPLIT_SEED}"
                     for n in DATASETS},
           "perturbations": {"half_beams": f"LiDAR: even beams of {LIDAR_BEAMS} elevation bins from an estimated sensor "
                                           "origin kept; ScanNet: random 50% of the points",
                             "range_noise": f"LiDAR: N(0, {RANGE_NOISE_LIDAR} m) along the ray; ScanNet: N(0, "
                                            f"{NOISE_INDOOR} m) per axis"},
           "datasets": {}, "audit": {}, "pretrain_seconds": {}}
    md = []
    for variant in args.variant_names:
        secs = [load_json(args.out / "pretrain" / f"{variant}-s{s}" / "timing.json") for s in args.seeds]
        secs = [t["seconds"] for t in secs if t]
        doc["pretrain_seconds"][variant] = secs
    for name in args.datasets:
        table = []
        drows = {}
        for row in rows_order:
            runs = [piece(args, "probe", name, row, s) for s in args.seeds]
            runs = [r for r in runs if r]
            if not runs:
                continue
            d = {"seeds": len(runs)}
            for key in ("linear", "knn"):
                d[key] = mean_std([r[key][0] for r in runs if key in r])
            for p in PERTURBATIONS:
                d[p] = mean_std([r[p]["miou"] for r in runs])
                d[p + "_drop"] = mean_std([r[p]["drop"] for r in runs])
            # Paired with the random-init encoder of the same seed (same labelled-point subset).
            for key in ("linear", "knn"):
                pairs = []
                for s in args.seeds:
                    a = piece(args, "probe", name, row, s)
                    b = piece(args, "probe", name, "random", s)
                    if a and b and key in a and key in b:
                        pairs.append(a[key][0] - b[key][0])
                d[key + "_vs_random"] = mean_std(pairs)
            drows[row] = d
            table.append([labels.get(row, f"`{row}` pretrained"), str(len(runs)), pm(*d["linear"]),
                          pm(*d["linear_vs_random"]), pm(*d["knn"]), pm(*d["knn_vs_random"]),
                          pm(*d["half_beams"]), pm(*d["half_beams_drop"]), pm(*d["range_noise"]),
                          pm(*d["range_noise_drop"])])
        doc["datasets"][name] = drows
        from ssl3d_ros.evaluation.report import markdown_table

        md += [f"### {DATASETS[name]['title']}", "",
               markdown_table(["encoder", "seeds", "linear mIoU", "Δ vs random", "kNN mIoU", "Δ vs random",
                               "linear, half beams", "drop",
                               "linear, range noise", "drop"], table), ""]
    for name in args.datasets:
        table = []
        arows = {}
        for row in rows_order:
            runs = [piece(args, "audit", name, row, s) for s in args.seeds]
            runs = [r for r in runs if r]
            if not runs:
                continue
            a = {t: mean_std([r["r2"][t] for r in runs]) for t in ("height", "normal", "xyz")}
            a["miou"] = mean_std([r["miou"] for r in runs])
            arows[row] = a
            table.append([labels.get(row, f"`{row}` pretrained"), str(len(runs))]
                         + [pm(*a[t], percent=False) for t in ("height", "normal", "xyz")] + [pm(*a["miou"])])
        doc["audit"][name] = arows
        if table:
            from ssl3d_ros.evaluation.report import markdown_table

            md += [f"### Shortcut audit, {DATASETS[name]['title']}", "",
                   markdown_table(["encoder", "seeds", "R² height", "R² normal", "R² xyz", "probe mIoU"], table), ""]
    if doc["pretrain_seconds"]:
        md += ["### Pretraining wall time per run (s, 1 thread)", "",
               "| variant | runs | seconds |", "|---|---|---|"]
        for v, secs in doc["pretrain_seconds"].items():
            if secs:
                md.append(f"| {v} | {len(secs)} | {np.mean(secs):.0f} ± {np.std(secs):.0f} |")
        md.append("")
    return doc, "\n".join(md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "real_study")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=RECIPE:KEY=VALUE[;KEY=VALUE]",
                   help="an extra pretraining variant, e.g. 'jepa-fine=jepa:recipe.patch_size=0.8;recipe.level=-2' (YAML values)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--steps", type=int, default=300, help="pretraining steps (every recipe)")
    p.add_argument("--batch-size", type=int, default=2, help="pretraining scans per step (every recipe)")
    p.add_argument("--crop-points", type=int, default=6000, help="points per scene-level view (every recipe)")
    p.add_argument("--features", nargs="+", default=XYZ_FEATURES,
                   help="encoder input features (geometry only; part of the folder's budget), e.g. 'constant height'")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (pretraining and probes)")
    p.add_argument("--max-points", type=int, default=40_000, help="labelled points used per scan (seeded subset)")
    p.add_argument("--linear-iters", type=int, default=100)
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--supervised-steps", type=int, default=100, help="0: no supervised reference")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--no-audit", action="store_true")
    p.add_argument("--baselines-from", type=Path, metavar="DIR",
                   help="report the random/raw/supervised rows of another study folder (e.g. a longer-budget "
                        "run made with --no-baselines; the baselines do not depend on the pretraining budget)")
    p.add_argument("--report-only", action="store_true", help="only rebuild study.json / study.md from the cache")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    from ssl3d_ros.config import ConfigError, set_dotted

    args.variants = {r: r for r in args.recipes}
    args.recipe_override = {}  # variant name -> its SECTION.KEY=VALUE assignments
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        recipe, _, overrides = rest.partition(":")
        if recipe not in RECIPES or not name:
            p.error(f"--variant {spec!r}: expected NAME=RECIPE[:KEY=VALUE;...]")
        args.variants[name] = recipe
        assignments = [item.strip() for item in overrides.split(";") if item.strip()]
        try:
            for assignment in assignments:
                set_dotted({}, assignment)  # malformed assignments fail here, not after hours of other runs
        except ConfigError as exc:
            p.error(f"--variant {spec!r}: {exc}")
        args.recipe_override[name] = assignments
    args.variant_names = list(args.variants)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "study.log")])
    import torch

    torch.set_num_threads(args.threads)
    # Cached pieces are only comparable under one budget: refuse to mix budgets in one folder.
    budget = {"steps": args.steps, "batch_size": args.batch_size, "crop_points": args.crop_points,
              "max_points": args.max_points, "linear_iters": args.linear_iters, "knn_k": args.knn_k,
              "supervised_steps": args.supervised_steps, "features": list(args.features)}
    previous = load_json(args.out / "budget.json")
    if previous is not None:
        previous.setdefault("features", XYZ_FEATURES)
        if previous != budget:
            raise SystemExit(f"{args.out} holds results of another budget {previous}; use another --out")
    if args.baselines_from is not None:
        other = load_json(args.baselines_from / "budget.json") or {}
        if other.get("features", XYZ_FEATURES) != budget["features"]:
            raise SystemExit(f"--baselines-from {args.baselines_from}: its baselines use other input features")
    atomic_json(args.out / "budget.json", budget)
    if not args.report_only:
        datasets = {n: Dataset(n, args.max_points) for n in args.datasets}
        for name, ds in datasets.items():
            log.info("%s: %d points, %d test (split: %s)", name, len(ds.scan), int(ds.test.sum()), ds.split.describe())
        for seed in args.seeds:
            run_seed(seed, args.variants, datasets, args)
            doc, md = collect(args)
            write_report(args, doc, md)
    doc, md = collect(args)
    write_report(args, doc, md)
    print(md)
    return 0


def write_report(args, doc, md):
    atomic_json(args.out / "study.json", doc)
    header = ["# Real-data study", "",
              f"- pretraining: {', '.join(PRETRAIN_SOURCES)} (unlabelled), every variant {args.steps} steps x batch "
              f"{args.batch_size} x {args.crop_points}-point crops, {args.threads} thread(s); "
              f"input features {' + '.join(args.features)}",
              f"- seeds: {args.seeds}; values mean ± sample std over seeds (n < 3 marked)",
              f"- split: {doc['split']}", f"- perturbations: {doc['perturbations']}", ""]
    (args.out / "study.md").write_text("\n".join(header) + md + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
