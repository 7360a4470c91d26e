"""Scoring a segmentation model on labelled scans, as the node segments them: the inference
preprocessing (no augmentation), one scan at a time, every labelled point scored (points that
preprocessing drops count as misses)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ssl3d_ros.labels import ScoreAccumulator, SegmentationScores
from ssl3d_ros.preprocessing import PreprocessConfig, collate, preprocess
from ssl3d_ros.scan import Scan


@torch.no_grad()
def predict_points(model: torch.nn.Module, scan: Scan, preprocessing: PreprocessConfig, device: torch.device) -> np.ndarray:
    """(N,) int64 class per point (-1 where preprocessing dropped the point)."""
    vox = preprocess(scan, preprocessing)
    voxel_class = model(collate([vox], device=device)).argmax(1).cpu().numpy()
    pv = vox.point_voxel.numpy()
    return np.where(pv >= 0, voxel_class[np.clip(pv, 0, None)], -1)


@torch.no_grad()
def voxel_hypercolumns(encoder: torch.nn.Module, scans: Sequence[Scan], preprocessing: PreprocessConfig,
                       device: torch.device) -> torch.Tensor:
    """(V, C) hypercolumns of every voxel of ``scans``, as the node computes them (for a PCA basis)."""
    was_training = encoder.training
    encoder.eval()
    try:
        parts = [encoder.hypercolumn(encoder(collate([preprocess(scan, preprocessing)], device=device))).float().cpu()
                 for scan in scans]
    finally:
        encoder.train(was_training)
    return torch.cat(parts)


@torch.no_grad()
def score_scans(model: torch.nn.Module, scans: Sequence[Scan], preprocessing: PreprocessConfig, num_classes: int,
                device: torch.device) -> SegmentationScores:
    """Overall scores over ``scans`` (labels: class indices, negative = not scored)."""
    was_training = model.training
    model.eval()
    acc = ScoreAccumulator(num_classes)
    try:
        for scan in scans:
            scored = scan.labels >= 0
            if scored.any():
                acc.add(scan.labels[scored], predict_points(model, scan, preprocessing, device)[scored])
    finally:
        model.train(was_training)
    return acc.scores()


def class_table(scores: dict) -> str:
    """Per-class IoU (%) and support (labelled points) of a validation or evaluation record, as text."""
    def percent(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"

    width = max(len("class"), *(len(name) for name in scores["iou"]))
    lines = [f"{'class':<{width}}  {'IoU %':>6}  {'support':>10}"]
    lines += [f"{name:<{width}}  {percent(iou):>6}  {scores['support'][name]:>10,}" for name, iou in scores["iou"].items()]
    lines.append(f"{'mIoU':<{width}}  {percent(scores['miou']):>6}")
    return "\n".join(lines)


__all__ = ["predict_points", "score_scans", "voxel_hypercolumns", "class_table"]
