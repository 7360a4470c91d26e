"""The one sparse structure passed through preprocessing, the encoder and the objectives.

Like Pointcept's ``Point``: voxel features and integer coordinates of a whole batch in one tensor,
scans told apart by the batch column, plus a cache of index maps so that a kernel map or a
downsampling map is built once per level and reused by every layer of that level.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class SparseTensor:
    feats: torch.Tensor  # (M, C) float
    coords: torch.Tensor  # (M, 4) int32: batch, x, y, z in voxels of this level
    batch_size: int
    stride: int = 1  # voxel size of this level in level-0 voxels
    cache: dict = field(default_factory=dict)  # index maps keyed by (kind, stride, ...), shared within a forward

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape[1] != 4:
            raise ValueError(f"coords must be (M, 4) [batch, x, y, z], got {tuple(self.coords.shape)}")
        if self.feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"{self.feats.shape[0]} feature rows for {self.coords.shape[0]} coordinates")

    def __len__(self) -> int:
        return self.coords.shape[0]

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def batch(self) -> torch.Tensor:
        return self.coords[:, 0].long()

    @property
    def offset(self) -> torch.Tensor:
        """Cumulative voxel count per scan (Pointcept's offset batching)."""
        counts = torch.bincount(self.batch, minlength=self.batch_size)
        return torch.cumsum(counts, 0)

    def replace_feats(self, feats: torch.Tensor) -> "SparseTensor":
        """Same voxels and shared cache, new features."""
        return replace(self, feats=feats)
