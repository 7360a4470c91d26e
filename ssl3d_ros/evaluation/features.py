"""Per-point features of labelled scans from a frozen encoder, for probes and the audit.

Three feature sets, all per input point in input order (only points the preprocessing kept):

- ``hypercolumn``: what the node's heads see: every level's voxel features copied down to the
  level-0 voxels (``encoder.hypercolumn``) and un-pooled to the points.
- ``multilevel`` (the MSM multi-level probe): every level's features interpolated to each point's
  position by inverse-distance weighting over the ``k`` nearest voxels of that level (positions of
  coarse voxels: the mean of their level-0 voxels), each level standardised separately, then
  concatenated. Unlike the hypercolumn's nearest-parent copy, coarse features vary smoothly inside
  a coarse voxel, as in MSM's evaluation of hierarchical encoders.
- ``raw``: the encoder's input features (``preprocess(...).feat``) un-pooled to the points: the
  "linear model on the raw input" baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..preprocessing import PreprocessConfig, collate, preprocess, unpool
from ..scan import Scan

FeatureKind = Literal["hypercolumn", "multilevel", "raw"]


@dataclass
class PointFeatures:
    """Features of the kept points of one scan: ``index`` into the scan's points, (n, C) ``feat``."""

    index: np.ndarray  # (n,) int64 input point indices (points kept by preprocessing)
    feat: torch.Tensor  # (n, C) float32


def level_parent_maps(output) -> list[torch.Tensor]:
    """Level-0 voxel -> level-k voxel index per level (identity for level 0)."""
    levels = output.levels
    parents = list(getattr(output, "parents", None) or [])
    if len(parents) == len(levels) - 1:
        parents = [torch.arange(len(levels[0]), device=levels[0].feats.device)] + parents
    if len(parents) != len(levels):
        raise ValueError(f"encoder output has {len(parents)} parent maps for {len(levels)} levels")
    return [p.long() for p in parents]


def _scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    sums = values.new_zeros((size, values.shape[1])).index_add_(0, index, values)
    return sums / torch.bincount(index, minlength=size).clamp_min(1).unsqueeze(1).to(values.dtype)


def interpolate_levels(output, level0_coord: torch.Tensor, points: np.ndarray, k: int = 3) -> torch.Tensor:
    """(n, sum C_l) features of every level at ``points`` by inverse-distance weighting of the ``k``
    nearest voxels of that level, each level standardised (zero mean, unit variance per channel) so a
    wide coarse level does not dominate a linear probe's regularisation."""
    parts = []
    for level, parent in zip(output.levels, level_parent_maps(output)):
        feats = level.feats.float()
        pos = _scatter_mean(level0_coord.float(), parent, len(feats)).numpy()
        kk = min(k, len(pos))
        dist, nbr = cKDTree(pos).query(points, k=kk)
        dist, nbr = dist.reshape(len(points), kk), nbr.reshape(len(points), kk)
        weight = 1.0 / np.maximum(dist, 1e-6)
        weight /= weight.sum(1, keepdims=True)
        interp = (feats[torch.from_numpy(nbr)] * torch.from_numpy(weight).float().unsqueeze(2)).sum(1)
        parts.append((interp - interp.mean(0)) / interp.std(0).clamp_min(1e-6))
    return torch.cat(parts, 1)


@torch.no_grad()
def extract_features(encoder: torch.nn.Module | None, pre_cfg: PreprocessConfig, scan: Scan,
                     kinds: tuple[FeatureKind, ...] = ("hypercolumn",)) -> dict[str, PointFeatures]:
    """The requested feature sets of one scan (``encoder`` may be None when only ``raw`` is asked)."""
    vox = preprocess(scan, pre_cfg)
    valid = np.asarray(vox.point_valid, dtype=bool)
    index = np.flatnonzero(valid)
    pv = vox.point_voxel[torch.from_numpy(index)]
    out: dict[str, PointFeatures] = {}
    if "raw" in kinds:
        out["raw"] = PointFeatures(index, unpool(vox.feat.float(), pv))
    if {"hypercolumn", "multilevel"} & set(kinds):
        if encoder is None:
            raise ValueError("hypercolumn/multilevel features need an encoder")
        param = next(encoder.parameters())
        sparse = collate([vox], device=param.device)
        sparse.feats = sparse.feats.to(param.dtype)
        output = encoder(sparse)
        if "hypercolumn" in kinds:
            out["hypercolumn"] = PointFeatures(index, unpool(encoder.hypercolumn(output).float().cpu(), pv))
        if "multilevel" in kinds:
            out["multilevel"] = PointFeatures(index, interpolate_levels(output, vox.coord, scan.points[index]))
    return out


__all__ = ["FeatureKind", "PointFeatures", "extract_features", "interpolate_levels", "level_parent_maps"]
