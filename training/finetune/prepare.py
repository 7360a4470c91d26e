"""Everything a fine-tuning run settles before its first step: the class map, the labelled training
and validation scans with the limited-label selection, and the initial encoder with its
preprocessing (from the ``init`` checkpoint, checked against the data, or from scratch)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl3d_ros.config import ConfigError
from ssl3d_ros.labels import IGNORE, ClassMap, block_split
from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels, preprocess
from ssl3d_ros.scan import Scan

from ..config import encoder_config
from ..loop import inference_encoder
from .config import FinetuneConfig
from .labels import Selection, open_labelled, read_labelled, resolve_class_map, select_labels

log = logging.getLogger(__name__)

PREPROCESSING_CHECK_SCANS = 8  # scans preprocessed up front to check the input against the encoder


@dataclass
class InitialEncoder:
    encoder: nn.Module
    preprocessing: PreprocessConfig
    provenance: dict[str, Any]  # what the weights started from, for the output checkpoint
    head: Any = None  # init's LinearSegHead, with init_head
    class_names: tuple[str, ...] = ()  # the classes of that head


def initial_encoder(cfg: FinetuneConfig, device: torch.device) -> InitialEncoder:
    """The encoder to fine-tune. Sparse convs: pure torch on CPU (the spconv CPU wheel cannot train),
    the default backend on CUDA. Seed torch before calling (fresh weights)."""
    from ssl3d_ros.checkpoint import load_checkpoint
    from ssl3d_ros.models.encoder import SparseEncoder

    backend = "auto" if device.type == "cuda" else "torch"
    if cfg.from_scratch:
        pre = cfg.preprocessing
        arch = encoder_config(cfg.encoder, feature_channels(pre), {"backend": backend})
        return InitialEncoder(SparseEncoder(arch), pre, {"init": "none"})
    ckpt = load_checkpoint(cfg.init, backend=backend)
    encoder = inference_encoder(ckpt.encoder.float())
    provenance = {"init": str(cfg.init), "init_recipe": ckpt.recipe.name if ckpt.recipe else None,
                  "random_weights": cfg.random_weights}
    if cfg.random_weights:
        encoder = SparseEncoder(dataclasses.replace(encoder.cfg, backend=backend))
    if not cfg.init_head:
        return InitialEncoder(encoder, ckpt.preprocessing, provenance)
    if ckpt.seg_head is None or ckpt.classes is None:
        raise ConfigError(f"init_head: {cfg.init} has no segmentation head (an ssl3d-pretrain encoder has none: "
                          "fit one with ssl3d-probe --write-head or ssl3d-finetune)")
    return InitialEncoder(encoder, ckpt.preprocessing, {**provenance, "init_head": True}, ckpt.seg_head.float(),
                          tuple(ckpt.classes.names))


def check_head_classes(init: InitialEncoder, class_map: ClassMap, origin: str) -> None:
    """init_head: the checkpoint's head must predict the class map's classes, in its order."""
    if init.head is not None and tuple(init.class_names) != tuple(class_map.class_names):
        raise ConfigError(f"init_head: {origin} predicts {list(init.class_names)}, but class map {class_map.name} "
                          f"has {list(class_map.class_names)}")


def check_input(pre: PreprocessConfig, scans: list[Scan], origin: str) -> None:
    """The encoder's preprocessing must run on the data (fields such as intensity or rgb present)."""
    for scan in scans[:PREPROCESSING_CHECK_SCANS]:
        try:
            vox = preprocess(scan, pre)
        except ValueError as exc:
            raise ConfigError(f"{origin}: its preprocessing does not fit the data: {exc}") from None
        if len(vox) == 0:
            raise ConfigError(f"{origin}: preprocessing (voxel {pre.voxel_size} m, range {pre.min_range}.."
                              f"{pre.max_range} m, crop {pre.crop_box}) keeps no point of {scan.source}")


@dataclass
class FinetuneData:
    class_map: ClassMap
    selection: Selection
    validation: list[Scan]  # labels: class indices scored (IGNORE elsewhere)
    skipped: list[tuple[str, str]]
    validation_rule: str


def with_labels(scan: Scan, labels: np.ndarray) -> Scan:
    return Scan(scan.points, scan.fields, scan.frame_id, scan.stamp_ns, labels.astype(np.int32),
                scan.intensity_scale, scan.source)


def without_intensity(scan: Scan) -> Scan:
    """The scan as the node sees a cloud without an intensity field (input.missing_intensity: zero)."""
    fields = dict(scan.fields)
    if "intensity" in fields:
        fields["intensity"] = np.zeros_like(fields["intensity"])
    return Scan(scan.points, fields, scan.frame_id, scan.stamp_ns, scan.labels, scan.intensity_scale, scan.source)


def prepare_data(cfg: FinetuneConfig) -> FinetuneData:
    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: give labelled scans (paths or sim:outdoor) with --data")
    class_map = resolve_class_map(cfg.labels, cfg.data.sources)
    train = read_labelled(open_labelled(cfg.data.sources, cfg.data, cfg.labels.label_field), class_map)
    scans, skipped = train.scans, list(train.skipped)
    val_cfg = cfg.validation
    validation: list[Scan] = []
    rules = []
    if val_cfg.holdout_scans:
        if val_cfg.holdout_scans >= len(scans):
            raise ConfigError(f"validation.holdout_scans={val_cfg.holdout_scans} leaves no training scan of {len(scans)}")
        validation += scans[-val_cfg.holdout_scans:]
        scans = scans[:-val_cfg.holdout_scans]
        rules.append(f"the last {val_cfg.holdout_scans} scan(s) of data.sources")
    exclude = None
    if val_cfg.split == "block":
        try:
            exclude = [block_split(s.points, val_cfg.block_size, val_cfg.test_fraction, val_cfg.seed + i)
                       for i, s in enumerate(scans)]
        except ValueError as exc:
            raise ConfigError(f"validation.split block: {exc}") from None
        validation += [with_labels(s, np.where(m, s.labels, IGNORE)) for s, m in zip(scans, exclude)]
        rules.append(f"{val_cfg.test_fraction:.0%} of the {val_cfg.block_size:g} m blocks of every training scan")
    if val_cfg.sources:
        held = read_labelled(open_labelled(val_cfg.sources, cfg.data, cfg.labels.label_field, val_cfg.sim_seed), class_map)
        validation += held.scans
        skipped += held.skipped
        rules.append(f"validation.sources {list(val_cfg.sources)}")
    if val_cfg.zero_intensity:
        validation = [without_intensity(s) for s in validation]
        rules.append("intensity zeroed")
    selection = select_labels(scans, cfg.labels, class_map.num_classes, exclude)
    return FinetuneData(class_map, selection, validation, skipped, "; ".join(rules) or "none")


__all__ = ["InitialEncoder", "initial_encoder", "check_head_classes", "check_input", "without_intensity", "FinetuneData", "prepare_data"]
