"""One view of a batch of scans after preprocessing: what the recipes consume.

``VoxelBatch`` is the collated form (offset batching, batch index in ``coords[:, 0]``) that also keeps,
for each voxel, its metric coordinate in the augmented view (``coord``) and in the original scan
(``origin``). ``origin`` is invariant to the view's augmentations, so voxels of two views of the same
scan are matched through it (cross-view targets, Sonata's matching by original coordinates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ssl3d_ros.models.structure import SparseTensor
from ssl3d_ros.preprocessing import VoxelizedScan

from .hierarchy import scatter_mean


@dataclass
class ViewVoxels:
    """One view of one scan (built in a DataLoader worker): preprocessed voxels plus their origins."""

    grid_coord: torch.Tensor  # (M, 3) int32
    coord: torch.Tensor  # (M, 3) float32, augmented view, metres
    origin: torch.Tensor  # (M, 3) float32, same voxel in the original scan frame
    feat: torch.Tensor  # (M, C) float32

    @classmethod
    def from_voxelized(cls, vox: VoxelizedScan, original_points: np.ndarray) -> "ViewVoxels":
        """Attach to every voxel the mean original position of the input points that fell into it."""
        valid = vox.point_valid
        pts = torch.from_numpy(np.ascontiguousarray(original_points, dtype=np.float32))[valid]
        # float64 sums: world-frame coordinates of a few hundred metres keep their centimetres
        origin = scatter_mean(pts.double(), vox.point_voxel[valid], len(vox)).float()
        return cls(vox.grid_coord, vox.coord, origin, vox.feat)


@dataclass
class VoxelBatch:
    coords: torch.Tensor  # (M, 4) int32: batch, x, y, z (grid shifted to >= 0 per scan)
    coord: torch.Tensor  # (M, 3) float32 metres, augmented view
    origin: torch.Tensor  # (M, 3) float32 metres, original scan frame
    feat: torch.Tensor  # (M, C)
    batch_size: int

    def __len__(self) -> int:
        return self.coords.shape[0]

    @property
    def batch(self) -> torch.Tensor:
        return self.coords[:, 0].long()

    @property
    def device(self) -> torch.device:
        return self.coords.device

    def sparse(self, feat: torch.Tensor | None = None) -> SparseTensor:
        """The encoder input (optionally with replaced features, e.g. mask tokens)."""
        return SparseTensor(feats=self.feat if feat is None else feat, coords=self.coords, batch_size=self.batch_size)

    def select(self, index: torch.Tensor) -> "VoxelBatch":
        """The voxels chosen by a boolean mask or index tensor (e.g. the visible part of a masked view)."""
        return VoxelBatch(self.coords[index], self.coord[index], self.origin[index], self.feat[index], self.batch_size)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "VoxelBatch":
        return VoxelBatch(
            *(t.to(device, non_blocking=non_blocking) for t in (self.coords, self.coord, self.origin, self.feat)),
            self.batch_size,
        )

    def pin_memory(self) -> "VoxelBatch":
        return VoxelBatch(*(t.pin_memory() for t in (self.coords, self.coord, self.origin, self.feat)), self.batch_size)

    @classmethod
    def collate(cls, views: Sequence[ViewVoxels]) -> "VoxelBatch":
        coords, coord, origin, feat = [], [], [], []
        for b, view in enumerate(views):
            grid = view.grid_coord.to(torch.int32)
            if grid.shape[0]:
                grid = grid - grid.min(dim=0).values  # same shift as preprocessing.collate
            coords.append(torch.cat([torch.full((grid.shape[0], 1), b, dtype=torch.int32), grid], dim=1))
            coord.append(view.coord)
            origin.append(view.origin)
            feat.append(view.feat)
        return cls(torch.cat(coords), torch.cat(coord), torch.cat(origin), torch.cat(feat), len(views))


Views = dict[str, list[VoxelBatch]]  # view group name -> one VoxelBatch per view of that group


def views_to(views: Views, device: torch.device | str) -> Views:
    non_blocking = torch.device(device).type == "cuda"
    return {name: [v.to(device, non_blocking=non_blocking) for v in group] for name, group in views.items()}


__all__ = ["ViewVoxels", "VoxelBatch", "Views", "views_to"]
