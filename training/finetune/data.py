"""Augmented labelled views for fine-tuning, on pretraining's deterministic resumable sample order.

A sample is one augmented view of one labelled scan (views.py's density change, crop, rotation,
scaling, flips, jitter, intensity jitter, then the one preprocessing path) with, for each selected
labelled point that preprocessing kept, its voxel and class. The loss is taken on those points, so
every labelled point counts once, as in evaluation. ``PretrainDataset`` supplies the order (a pure
function of seed and position) and the skip-and-replace handling of unusable scans.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ssl3d_ros.preprocessing import PreprocessConfig, preprocess, resolve_intensity_scale
from ssl3d_ros.scan import Scan

from ..data import PretrainDataset, Sample, UnusableScan
from ..views import ViewGroupConfig, crop, density_keep, transform
from ..voxels import ViewVoxels, VoxelBatch


@dataclass
class LabelledView:
    voxels: ViewVoxels
    label_voxel: torch.Tensor  # (L,) int64 voxel of each selected labelled point
    label_class: torch.Tensor  # (L,) int64 its class


def labelled_view(scan: Scan, cfg: ViewGroupConfig, preprocessing: PreprocessConfig, rng: np.random.Generator) -> LabelledView:
    """One augmented view of ``scan`` (labels: class indices, negative = no training label)."""
    kept = scan.select(density_keep(scan, cfg.augment, rng))
    # The crop is centred on a labelled point: with labels in a few clicked blocks (labels.selection: blocks)
    # a crop around any point mostly held none (1 % in 4 m blocks, 20k-point ball crops on SemanticKITTI:
    # 2,791 of ~3,600 views unusable, then 17 in a row stopped the run). With labels spread uniformly the
    # centres are spread as before.
    labelled = np.flatnonzero(kept.labels >= 0) if kept.labels is not None else np.empty(0, dtype=np.int64)
    centre = kept.points[labelled[rng.integers(len(labelled))] if len(labelled) else rng.integers(len(kept))]
    kept = kept.select(crop(kept.points, centre, cfg, rng))
    full_scale = None
    if "intensity" in preprocessing.features and "intensity" in kept.fields:
        full_scale = resolve_intensity_scale(kept, preprocessing)
    augmented = transform(kept, cfg.augment, rng, full_scale)
    vox = preprocess(augmented, preprocessing, training=True,
                     generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
    labels = torch.from_numpy(kept.labels.astype(np.int64))
    use = (labels >= 0) & vox.point_valid
    return LabelledView(ViewVoxels.from_voxelized(vox, kept.points), vox.point_voxel[use], labels[use])


class LabelledViewMaker:
    """Picklable: builds one labelled view per sample in DataLoader workers."""

    def __init__(self, cfg: ViewGroupConfig, preprocessing: PreprocessConfig) -> None:
        self.cfg = cfg
        self.preprocessing = preprocessing

    def __call__(self, scan: Scan, rng: np.random.Generator) -> LabelledView:
        return labelled_view(scan, self.cfg, self.preprocessing, rng)


class LabelledDataset(PretrainDataset):
    """PretrainDataset whose sample is a LabelledView (a view without any labelled point is unusable:
    the scan is replaced by the next one, counted)."""

    def make_views(self, scan: Scan, rng: np.random.Generator, index: int = -1,
                   counts: dict[str, int] | None = None) -> LabelledView:
        """One labelled view (fine-tuning has no temporal partner; ``index``/``counts`` as the base's)."""
        if len(scan) < self.cfg.min_voxels:
            raise UnusableScan(f"only {len(scan)} points")
        view = self.view_maker(scan, rng)
        if view.voxels.coord.shape[0] < self.cfg.min_voxels:
            raise UnusableScan(f"the view has {view.voxels.coord.shape[0]} voxels (< data.min_voxels={self.cfg.min_voxels})")
        if len(view.label_class) == 0:
            raise UnusableScan("no selected labelled point in the view")
        return view


@dataclass
class LabelledBatch:
    voxels: VoxelBatch
    label_voxel: torch.Tensor  # into the batch's voxels
    label_class: torch.Tensor
    skipped: list[tuple[str, str]]
    num_scans: int

    def to(self, device: torch.device) -> "LabelledBatch":
        nb = device.type == "cuda"
        return LabelledBatch(self.voxels.to(device, non_blocking=nb), self.label_voxel.to(device, non_blocking=nb),
                             self.label_class.to(device, non_blocking=nb), self.skipped, self.num_scans)

    def pin_memory(self) -> "LabelledBatch":
        return LabelledBatch(self.voxels.pin_memory(), self.label_voxel.pin_memory(), self.label_class.pin_memory(),
                             self.skipped, self.num_scans)


def collate_labelled(samples: Sequence[Sample]) -> LabelledBatch:
    views = [s.views for s in samples]
    offsets = np.cumsum([0] + [v.voxels.coord.shape[0] for v in views[:-1]])
    return LabelledBatch(
        VoxelBatch.collate([v.voxels for v in views]),
        torch.cat([v.label_voxel + int(o) for v, o in zip(views, offsets)]),
        torch.cat([v.label_class for v in views]),
        [item for s in samples for item in s.skipped],
        len(samples),
    )


__all__ = ["LabelledView", "labelled_view", "LabelledViewMaker", "LabelledDataset", "LabelledBatch", "collate_labelled"]
