"""What ``ssl3d-probe`` and ``ssl3d-audit`` probe: labelled scans and a frozen encoder's features of them.

- :func:`label_scans`: class indices, per-point test masks and the labelled points kept per scan
  (:class:`LabelledScans`).
- :func:`gather_features`: the train/test features of the kept points (:class:`SplitFeatures`).
- :func:`load_encoder`: the checkpoint's encoder, frozen, and a factory of fresh ones of the same
  architecture.
- :func:`load_scans`, :func:`load_train_test_scans`, :func:`resolve_class_map`, :func:`add_data_arguments`,
  :func:`split_config_from_args`: the scans (files, folders, bags, or simulated), their class map and
  split, as both command lines take them.

The probes, baselines and report built on these are :mod:`ssl3d_ros.evaluation.probe`.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..labels import ClassMap, SplitConfig, load_class_map, point_test_masks
from ..preprocessing import PreprocessConfig
from ..scan import Scan
from .features import extract_features

#: The real-data study's protocol (docs/results.md), which ssl3d-probe's defaults follow (and
#: ssl3d-audit's block size).
STUDY_SUPERVISED_STEPS = 200
STUDY_BLOCK_SIZE = 10.0  # metres: outdoor LiDAR (the study uses 1.5 m for a ScanNet room)
STUDY_THREADS = 1


@dataclass
class SplitFeatures:
    """Features and class indices of the labelled train and test points of all scans."""

    train_x: torch.Tensor
    train_y: np.ndarray
    test_x: torch.Tensor
    test_y: np.ndarray


@dataclass
class LabelledScans:
    """Scans with their class indices (IGNORE where unlabelled) and per-point test masks."""

    scans: list[Scan]
    classes: list[np.ndarray]
    test_masks: list[np.ndarray]
    class_map: ClassMap
    keep: list[np.ndarray]  # per scan: bool, the labelled points used (after per-scan subsampling)


def label_scans(scans: Sequence[Scan], class_map: ClassMap, split: SplitConfig, max_points_per_scan: int,
                seed: int = 0, test_scans: list[bool] | None = None) -> LabelledScans:
    """``test_scans``: one flag per scan, the test scans of the ``files`` split."""
    scans = list(scans)
    for s in scans:
        if s.labels is None:
            raise ValueError(f"scan {s.source or '?'} has no labels; probes need labelled scans")
    classes = [class_map.apply(s.labels) for s in scans]
    if not any((c >= 0).any() for c in classes):
        raise ValueError(f"no point of the {len(scans)} scan(s) has a label in class map {class_map.name!r} "
                         f"(label space {class_map.label_space!r}): wrong --class-map?")
    masks = point_test_masks([s.points for s in scans], split, test_scans)
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        labelled = np.flatnonzero(c >= 0)
        if len(labelled) > max_points_per_scan:
            labelled = rng.choice(labelled, max_points_per_scan, replace=False)
        k = np.zeros(len(c), dtype=bool)
        k[labelled] = True
        keep.append(k)
    return LabelledScans(scans, classes, masks, class_map, keep)


def gather_features(data: LabelledScans, encoder: torch.nn.Module | None, pre_cfg: PreprocessConfig,
                    kinds: tuple[str, ...]) -> dict[str, SplitFeatures]:
    """Per feature kind, the train/test features of the kept labelled points of every scan."""
    parts: dict[str, dict[str, list]] = {k: {"trx": [], "try": [], "tex": [], "tey": []} for k in kinds}
    for scan, cls, test, keep in zip(data.scans, data.classes, data.test_masks, data.keep):
        feats = extract_features(encoder, pre_cfg, scan, kinds)
        for kind, pf in feats.items():
            use = keep[pf.index]
            idx = pf.index[use]
            x = pf.feat[torch.from_numpy(np.flatnonzero(use))]
            is_test = test[idx]
            is_test_t = torch.from_numpy(is_test)
            p = parts[kind]
            p["trx"].append(x[~is_test_t])
            p["try"].append(cls[idx][~is_test])
            p["tex"].append(x[is_test_t])
            p["tey"].append(cls[idx][is_test])
    out = {}
    for kind, p in parts.items():
        out[kind] = SplitFeatures(torch.cat(p["trx"]), np.concatenate(p["try"]), torch.cat(p["tex"]), np.concatenate(p["tey"]))
        if len(out[kind].train_y) == 0 or len(out[kind].test_y) == 0:
            raise ValueError(f"the split left {len(out[kind].train_y)} train and {len(out[kind].test_y)} test "
                             "labelled points; change --split / --test-fraction / --block-size")
    return out


def load_encoder(checkpoint: str | Path):
    """(frozen encoder, factory of fresh same-architecture encoders, preprocessing config, checkpoint).

    Fresh encoders use the pure-torch sparse convolutions: they are trained (supervised reference),
    and the spconv CPU wheel is forward-only."""
    from ..checkpoint import load_checkpoint
    from ..models.encoder import build_encoder

    ckpt = load_checkpoint(checkpoint, device="cpu")
    encoder = ckpt.encoder.float().eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    architecture = dataclasses.replace(ckpt.encoder_config, backend="torch")
    return encoder, (lambda: build_encoder(dataclasses.replace(architecture))), ckpt.preprocessing, ckpt


def load_scans(inputs: Sequence[str], *, sim: str | None, sim_scans: int, sim_seed: int, label_field: str | None,
               max_scans: int | None) -> list[Scan]:
    if sim:
        from ..sim import SimConfig, simulate_sequence

        scans = list(simulate_sequence(SimConfig(scene=sim), sim_scans, sim_seed))
    else:
        from ..io import open_sources

        source = open_sources(list(inputs), label_field=label_field)
        n = len(source) if max_scans is None else min(len(source), max_scans)
        scans = [source[i] for i in range(n)]
    if max_scans is not None:
        scans = scans[:max_scans]
    if not scans:
        raise SystemExit("no scans to probe (give input paths or --sim)")
    return scans


def load_train_test_scans(args: argparse.Namespace) -> tuple[list[Scan], list[bool] | None]:
    """The scans of ``args`` (inputs, or --sim) and, with --test-inputs, one test flag per scan (the
    inputs train, the --test-inputs scans test; a path on both sides is refused before reading)."""
    def scans_of(inputs: Sequence[str]) -> list[Scan]:
        return load_scans(inputs, sim=args.sim, sim_scans=args.sim_scans, sim_seed=args.sim_seed,
                          label_field=args.label_field, max_scans=args.max_scans)

    test_inputs = getattr(args, "test_inputs", None)
    if not test_inputs:
        return scans_of(args.inputs), None
    if args.sim or not args.inputs:
        raise SystemExit("--test-inputs names the test scans of input paths: give the training scans as inputs "
                         "(not --sim)")
    both = sorted({str(a) for a in args.inputs for t in test_inputs if _overlap(Path(a), Path(t))})
    if both:
        raise SystemExit(f"scans both trained and tested on: {', '.join(both)} (inputs and --test-inputs must "
                         "not overlap)")
    train, test = scans_of(args.inputs), scans_of(test_inputs)
    return train + test, [False] * len(train) + [True] * len(test)


def _overlap(a: Path, b: Path) -> bool:
    """Whether two input paths share scans: the same path, or a folder holding the other."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def resolve_class_map(arg: str | None, sim: str | None) -> ClassMap:
    if arg:
        return load_class_map(arg)
    if sim:
        return load_class_map(f"sim-{sim}")
    raise SystemExit("--class-map is required for recorded data (e.g. semantickitti, semantickitti-learning, scannet20)")


def add_data_arguments(parser: argparse.ArgumentParser, test_inputs: bool = False) -> None:
    """The data options; ``test_inputs``: also --test-inputs and the ``files`` split (ssl3d-probe)."""
    parser.add_argument("inputs", nargs="*", help="labelled scans: files, folders or rosbag2 bags" + (
        " (the training scans with --test-inputs)" if test_inputs else ""))
    if test_inputs:
        parser.add_argument("--test-inputs", nargs="+", metavar="PATH",
                            help="the test scans (files, folders or bags): split by files, the inputs train, "
                                 "these test (--split files; must not overlap the inputs)")
    parser.add_argument("--sim", choices=["outdoor", "indoor"], help="use simulated labelled scans instead of inputs")
    parser.add_argument("--sim-scans", type=int, default=4)
    parser.add_argument("--sim-seed", type=int, default=0)
    parser.add_argument("--label-field", help="PointCloud2 field holding labels (bags)")
    parser.add_argument("--class-map", help="class map name (config/classes) or YAML path; default for --sim: sim-<scene>")
    parser.add_argument("--max-scans", type=int)
    parser.add_argument("--with-xyz-only-copies", action="store_true",
                        help="add a copy of every scan with its intensity zeroed, as the node feeds a cloud "
                             "without intensity (input.missing_intensity: zero), so a head written with "
                             "--write-head serves xyz-only sensors too; both copies are scored")
    parser.add_argument("--split", choices=["block", "x_half", "scans", *(["files"] if test_inputs else [])],
                        help="block (default), x_half, scans (the last --test-fraction of the scans test)"
                             + (", files (with --test-inputs, its default)" if test_inputs else ""))
    parser.add_argument("--block-size", type=float, default=STUDY_BLOCK_SIZE,
                        help="metres (block split); default %(default)s as the study's SemanticKITTI split "
                             "(the study uses 1.5 for ScanNet rooms)")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the block split alone (default 0: the study's one fixed split, so runs "
                             "with different --seed are scored on the same test points)")
    parser.add_argument("--max-points-per-scan", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the labelled-point subset, the probes, the random-init baseline and the "
                             "supervised reference (not of the split: see --split-seed)")


def split_config_from_args(args: argparse.Namespace) -> SplitConfig:
    test_inputs = getattr(args, "test_inputs", None)
    kind = args.split or ("files" if test_inputs else "block")
    if (kind == "files") != bool(test_inputs):
        raise SystemExit("--test-inputs splits by files: give both --test-inputs and --split files (or no --split)")
    return SplitConfig(kind=kind, block_size=args.block_size, test_fraction=args.test_fraction, seed=args.split_seed)
