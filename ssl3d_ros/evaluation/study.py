"""The real-data study (docs/results.md): pretrain every recipe under one budget, probe the frozen
encoders on labelled scans against the random-init / raw-input / supervised references, test
robustness to sensor changes and run the shortcut audit.

Every piece (one pretraining run, one probe of one encoder on one scan, one audit row) is cached as
a JSON file in the study folder, so a stopped study continues where it stopped and a re-run with
more seeds, recipes or scans computes only what is missing. ``scripts/real_data_study.py`` is the
command line; :mod:`.study_report` turns the cached pieces into tables.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..labels import segmentation_scores
from ..preprocessing import PreprocessConfig
from .perturbations import PERTURBATIONS
from .probe import STUDY_SUPERVISED_STEPS
from .study_data import StudyInputError, StudyScan

log = logging.getLogger(__name__)

RECIPES = ("sonata", "msm", "jepa", "mae", "acl")
PRETRAIN_SOURCES = ("lidar/ouster", "lidar/kitti", "lidar/nuscenes")  # under the shared data folder
#: the main table's input (docs/results.md); geometry only: neither probed scan has intensity
MAIN_TABLE_FEATURES = ("constant", "height")
#: the input of study folders written before --features existed (budget.json without "features")
LEGACY_FEATURES = ("xyz", "height")
BASELINE_ROWS = ("random", "raw", "supervised")


@dataclass
class StudyBudget:
    """What makes cached pieces comparable: one study folder holds one budget (budget.json)."""

    steps: int = 900  # pretraining steps, every recipe
    batch_size: int = 2  # pretraining scans per step
    crop_points: int = 6000  # points per scene-level view
    max_points: int = 40_000  # labelled points used per scan (seeded subset)
    linear_iters: int = 100
    knn_k: int = 10
    supervised_steps: int = STUDY_SUPERVISED_STEPS  # 0: no supervised reference
    features: list[str] = field(default_factory=lambda: list(MAIN_TABLE_FEATURES))

    def as_json(self) -> dict:
        return {"steps": self.steps, "batch_size": self.batch_size, "crop_points": self.crop_points,
                "max_points": self.max_points, "linear_iters": self.linear_iters, "knn_k": self.knn_k,
                "supervised_steps": self.supervised_steps, "features": list(self.features)}


@dataclass
class Study:
    """One study folder and what to run in it."""

    out: Path
    data_root: Path  # the shared data folder (pretraining scans)
    config_dir: Path  # the shipped config/ (config/pretrain/<recipe>.yaml)
    budget: StudyBudget = field(default_factory=StudyBudget)
    variants: dict[str, str] = field(default_factory=lambda: {r: r for r in RECIPES})  # variant -> recipe
    overrides: dict[str, list[str]] = field(default_factory=dict)  # variant -> SECTION.KEY=VALUE
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    robustness: tuple[str, ...] = PERTURBATIONS
    audit: bool = True
    baselines: bool = True
    baselines_from: Path | None = None
    threads: int = 1
    workdir: Path | None = None  # cwd of the pretraining subprocesses (the repository root)


def load_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def check_budget(study: Study) -> None:
    """Refuse to mix budgets in one folder (or to report baselines made with another input), then
    record this one."""
    budget = study.budget.as_json()
    previous = load_json(study.out / "budget.json")
    if previous is not None:
        previous.setdefault("features", list(LEGACY_FEATURES))
        if previous != budget:
            raise StudyInputError(f"{study.out} holds results of another budget {previous}; use another --out "
                                  "or repeat that folder's budget flags")
    if study.baselines_from is not None:
        other = load_json(study.baselines_from / "budget.json") or {}
        if other.get("features", list(LEGACY_FEATURES)) != budget["features"]:
            raise StudyInputError(f"--baselines-from {study.baselines_from}: its baselines use other input features")
    atomic_write_json(study.out / "budget.json", budget)


def check_scan_record(study: Study, ds: StudyScan) -> None:
    """Cached pieces of a scan name belong to one spec: refuse a changed spec under the same name. The
    file locations may change (a data folder moved to another machine); what the scan is may not."""
    path = study.out / "labelled" / f"{ds.name}.json"
    record = ds.record()
    previous = load_json(path)

    def identity(spec: dict) -> dict:
        return {k: v for k, v in spec.items() if k not in ("path", "labels")}

    if previous is not None and identity(previous["spec"]) != identity(json.loads(json.dumps(record["spec"]))):
        raise StudyInputError(f"--labelled {ds.name}: {study.out} holds results of another spec under this name "
                              f"({previous['spec']}); use another name or --out")
    atomic_write_json(path, record)


# --------------------------------------------------------------------------- pretraining


def pretrain_config(study: Study, variant: str) -> dict:
    """The recipe's shipped config with the study's data, features and budget."""
    import yaml

    from ..config import set_dotted

    recipe, b = study.variants[variant], study.budget
    cfg = yaml.safe_load((study.config_dir / "pretrain" / f"{recipe}.yaml").read_text())
    cfg["data"] = {"sources": [str(study.data_root / s) for s in PRETRAIN_SOURCES], "topics": []}
    pre = cfg["preprocessing"]
    pre["features"] = list(b.features)
    pre["max_range"] = None  # world-frame probe scans: a range limit around the origin would cut them
    pre["xyz_center"] = "mean"  # translation invariant (sensor-frame pretraining scans, world-frame probe scans)
    # One crop size: every scene-level view holds at most crop_points points (sonata's local views keep
    # their own smaller crops; they are part of that recipe).
    views = cfg["recipe"]["views"] if "views" in cfg["recipe"] else cfg["recipe"]["base_config"]["views"]
    for name, view in views.items():
        if name != "local":
            view["crop_points"] = b.crop_points
    for assignment in study.overrides.get(variant, []):
        set_dotted(cfg, assignment)
    cfg["run"].update(steps=b.steps, batch_size=b.batch_size, threads=study.threads, workers=0,
                      checkpoint_every=max(50, b.steps // 4), tensorboard=False)
    return cfg


def run_pretraining(study: Study, variant: str, seed: int) -> Path:
    """OUT/pretrain/<variant>-s<seed>/encoder.safetensors, trained (or resumed) unless already there."""
    import yaml

    run_dir = study.out / "pretrain" / f"{variant}-s{seed}"
    encoder = run_dir / "encoder.safetensors"
    if encoder.exists():
        return encoder
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = pretrain_config(study, variant)
    cfg["run"].update(seed=seed, out_dir=str(run_dir))
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "ssl3d_ros.training.pretrain", "--config", str(config_path), "--no-progress"]
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        cmd.append("--resume")
    log.info("pretraining %s seed %d: %s", variant, seed, " ".join(cmd))
    t0 = time.perf_counter()
    with open(run_dir / "pretrain.log", "a") as logf:
        rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=study.workdir)
    if rc != 0 or not encoder.exists():
        raise RuntimeError(f"pretraining {variant} seed {seed} failed (exit {rc}); see {run_dir / 'pretrain.log'}")
    prev = load_json(run_dir / "timing.json") or {"seconds": 0.0}
    b = study.budget
    atomic_write_json(run_dir / "timing.json", {"seconds": prev["seconds"] + time.perf_counter() - t0,
                                                "steps": b.steps, "batch_size": b.batch_size,
                                                "crop_points": b.crop_points, "threads": study.threads})
    return encoder


# --------------------------------------------------------------------------- probing one encoder


def _miou(truth: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, float]:
    s = segmentation_scores(truth, pred, k)
    return float(s.miou), float(s.accuracy)


def score_perturbed(ds: StudyScan, keep: np.ndarray, clean_pred: np.ndarray, kind: str,
                    predict: Callable[[object], tuple[np.ndarray, np.ndarray]]) -> dict:
    """mIoU on the test points of the ``kind`` copy of the scan, and the drop from the clean prediction
    of the same points. ``predict(scan)`` returns (index of predicted points in that scan, classes)."""
    pscan, orig = ds.perturbed[kind]
    idx, pred = predict(pscan)
    o = orig[idx]
    sel = keep[o] & ds.test[o]
    truth, pred = ds.classes[o[sel]], pred[sel]
    clean_same = clean_pred[o[sel]]
    ok = clean_same >= 0  # points the clean preprocessing kept too
    k = ds.class_map.num_classes
    out = {"miou": _miou(truth, pred, k)[0], "clean_same_points": _miou(truth[ok], clean_same[ok], k)[0],
           "test_points": int(sel.sum())}
    out["drop"] = out["clean_same_points"] - out["miou"]
    return out


def probe_frozen(ds: StudyScan, encoder, pre_cfg: PreprocessConfig, kind: str, seed: int, study: Study,
                 knn: bool = True) -> dict:
    """Linear (+ kNN) probe on the clean train split, scored on the clean test split and on the
    perturbed copies' test points."""
    from .features import extract_features
    from .probes import KNNProbeConfig, LinearProbeConfig, knn_predict, train_linear_probe

    k, b = ds.class_map.num_classes, study.budget
    keep = ds.labelled(seed, b.max_points).keep[0]
    pf = extract_features(encoder, pre_cfg, ds.scan, (kind,))[kind]
    idx, x = pf.index, pf.feat
    tr, te = keep[idx] & ~ds.test[idx], keep[idx] & ds.test[idx]
    out = {"train_points": int(tr.sum()), "test_points": int(te.sum()), "feature_dim": int(x.shape[1])}
    t0 = time.perf_counter()
    probe = train_linear_probe(x[torch.from_numpy(tr)], ds.classes[idx[tr]], k,
                               LinearProbeConfig(max_iter=b.linear_iters, seed=seed))
    clean_pred = np.full(len(ds.scan), -1, dtype=np.int64)
    clean_pred[idx] = probe.predict(x)
    out["linear"] = _miou(ds.classes[idx[te]], clean_pred[idx[te]], k)
    out["linear_seconds"] = time.perf_counter() - t0
    if knn:
        t0 = time.perf_counter()
        pred = knn_predict(x[torch.from_numpy(tr)], ds.classes[idx[tr]], x[torch.from_numpy(te)], k,
                           KNNProbeConfig(k=b.knn_k, seed=seed))
        out["knn"] = _miou(ds.classes[idx[te]], pred, k)
        out["knn_seconds"] = time.perf_counter() - t0

    def predict(scan):
        feats = extract_features(encoder, pre_cfg, scan, (kind,))[kind]
        return feats.index, probe.predict(feats.feat)

    for name in study.robustness:
        out[name] = score_perturbed(ds, keep, clean_pred, name, predict)
    return out


def probe_supervised(ds: StudyScan, factory, pre_cfg: PreprocessConfig, seed: int, study: Study) -> dict:
    """The same architecture trained end to end on the clean train split (upper reference), scored
    like the frozen probes (clean test split, perturbed copies)."""
    from ..preprocessing import collate, preprocess
    from .probe import SupervisedConfig, supervised_point_predictions, train_supervised

    k, steps = ds.class_map.num_classes, study.budget.supervised_steps
    data = ds.labelled(seed, study.budget.max_points)
    keep = data.keep[0]
    torch.manual_seed(seed)
    enc = factory()
    with torch.no_grad():
        c_total = enc.hypercolumn(enc(collate([preprocess(ds.scan, pre_cfg)]))).shape[1]
    t0 = time.perf_counter()
    enc, head = train_supervised(enc, data, pre_cfg, SupervisedConfig(steps=steps, seed=seed), c_total)
    seconds = time.perf_counter() - t0
    clean_pred = supervised_point_predictions(enc, head, ds.scan, pre_cfg)
    te = keep & ds.test & (clean_pred >= 0)
    out = {"linear": _miou(ds.classes[te], clean_pred[te], k), "train_seconds": seconds, "steps": steps,
           "test_points": int(te.sum())}

    def predict(scan):
        pred = supervised_point_predictions(enc, head, scan, pre_cfg)
        idx = np.flatnonzero(pred >= 0)
        return idx, pred[idx]

    for name in study.robustness:
        out[name] = score_perturbed(ds, keep, clean_pred, name, predict)
    return out


def audit_row(ds: StudyScan, encoder, pre_cfg: PreprocessConfig, kind: str, seed: int) -> dict:
    from .audit import AuditConfig, audit_features, prepare_scans
    from .probes import LinearProbeConfig
    from .ridge import RidgeConfig

    cfg = AuditConfig(split=ds.spec.split(), ridge=RidgeConfig(seed=seed), linear=LinearProbeConfig(seed=seed),
                      max_points_per_scan=20_000, seed=seed)
    prepared = prepare_scans([ds.scan], ds.class_map, cfg)
    row = audit_features(kind, encoder, pre_cfg, kind, [ds.scan], prepared, ds.class_map.num_classes, cfg)
    return {"r2": row.r2, "miou": row.miou, "test_points": row.test_points, "seconds": row.seconds}


# --------------------------------------------------------------------------- the study


def cached(path: Path, compute: Callable[[], dict], required: tuple[str, ...] = ()) -> dict:
    """The piece at ``path``, computed and written unless it exists with every ``required`` key (a
    piece made with fewer robustness passes is recomputed when more are asked)."""
    doc = load_json(path)
    if doc is not None and all(key in doc for key in required):
        return doc
    t0 = time.perf_counter()
    doc = compute()
    doc["wall_seconds"] = time.perf_counter() - t0
    atomic_write_json(path, doc)
    log.info("wrote %s (%.1f s)", path, doc["wall_seconds"])
    return doc


def run_seed(study: Study, seed: int, scans: dict[str, StudyScan]) -> None:
    """Every missing piece of one seed: each variant's pretraining, probes and audit, then the references."""
    from .probe import RANDOM_INIT_SEED, load_encoder

    probe_dir, audit_dir = study.out / "probe", study.out / "audit"
    need = tuple(study.robustness)
    factory = pre_cfg = None
    for variant in study.variants:
        encoder, factory, pre_cfg, _ = load_encoder(run_pretraining(study, variant, seed))
        for name, ds in scans.items():
            cached(probe_dir / name / f"{variant}-s{seed}.json",
                   lambda: probe_frozen(ds, encoder, pre_cfg, "hypercolumn", seed, study), need)
            if study.audit:
                cached(audit_dir / name / f"{variant}-s{seed}.json",
                       lambda: audit_row(ds, encoder, pre_cfg, "hypercolumn", seed))
    if factory is None or not study.baselines:
        return
    for name, ds in scans.items():
        torch.manual_seed(RANDOM_INIT_SEED + seed)
        rnd = factory().eval()
        cached(probe_dir / name / f"random-s{seed}.json",
               lambda: probe_frozen(ds, rnd, pre_cfg, "hypercolumn", seed, study), need)
        if study.audit:
            cached(audit_dir / name / f"random-s{seed}.json", lambda: audit_row(ds, rnd, pre_cfg, "hypercolumn", seed))
        cached(probe_dir / name / f"raw-s{seed}.json", lambda: probe_frozen(ds, None, pre_cfg, "raw", seed, study), need)
        if study.audit and seed == study.seeds[0]:  # the raw input has no trained part: one seed is enough
            cached(audit_dir / name / f"raw-s{seed}.json", lambda: audit_row(ds, None, pre_cfg, "raw", seed))
        if study.budget.supervised_steps > 0:
            cached(probe_dir / name / f"supervised-s{seed}.json",
                   lambda: probe_supervised(ds, factory, pre_cfg, seed, study), need)


__all__ = ["BASELINE_ROWS", "LEGACY_FEATURES", "MAIN_TABLE_FEATURES", "PRETRAIN_SOURCES", "RECIPES", "Study",
           "StudyBudget", "audit_row", "cached", "check_budget", "check_scan_record", "load_json", "probe_frozen",
           "probe_supervised", "pretrain_config", "run_pretraining", "run_seed", "score_perturbed"]
