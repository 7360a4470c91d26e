"""Helpers on the encoder's voxel hierarchy: spatial keys, per-level positions, cross-view matching.

All vectorised (sorting and binary search over packed int64 keys); no loop over points.
"""
from __future__ import annotations

import torch

from ssl3d_ros.models.structure import SparseTensor

_BITS = 18  # per axis: +-131k cells (6.5 km at 5 cm)
_HALF = 1 << (_BITS - 1)
_AXIS_MASK = (1 << _BITS) - 1


def cell_keys(batch: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """One int64 per (scan, integer cell): batch in the top bits, then x, y, z (18 bits each)."""
    c = (cells.long() + _HALF).clamp(0, _AXIS_MASK)
    return (batch.long() << (3 * _BITS)) | (c[:, 0] << (2 * _BITS)) | (c[:, 1] << _BITS) | c[:, 2]


def position_keys(batch: torch.Tensor, pos: torch.Tensor, cell: float) -> torch.Tensor:
    return cell_keys(batch, torch.floor(pos / cell))


def lookup(query_keys: torch.Tensor, table_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query key, whether it is in ``table_keys`` and the row of (one) matching table entry."""
    if table_keys.numel() == 0:
        return torch.zeros_like(query_keys, dtype=torch.bool), torch.zeros_like(query_keys)
    sorted_keys, order = torch.sort(table_keys, stable=True)
    pos = torch.searchsorted(sorted_keys, query_keys).clamp_max(sorted_keys.numel() - 1)
    found = sorted_keys[pos] == query_keys
    return found, order[pos]


def match_positions(
    src_pos: torch.Tensor, src_batch: torch.Tensor, dst_pos: torch.Tensor, dst_batch: torch.Tensor, cell: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (src row, dst row) of the same scan whose positions fall in the same cell of size ``cell``.

    Used with original (pre-augmentation) coordinates to find the same place in two views.
    """
    found, dst_row = lookup(position_keys(src_batch, src_pos, cell), position_keys(dst_batch, dst_pos, cell))
    src_row = found.nonzero().squeeze(1)
    return src_row, dst_row[src_row]


def level_parents(levels: list[SparseTensor], parents: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Level-0 voxel -> level-k voxel index, one tensor per level (identity for level 0)."""
    parents = list(parents or [])
    if len(parents) == len(levels) - 1:
        parents = [torch.arange(len(levels[0]), device=levels[0].device)] + parents
    if len(parents) != len(levels):
        raise ValueError(f"encoder returned {len(parents)} parent maps for {len(levels)} levels")
    return [p.long() for p in parents]


def scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    sums = values.new_zeros((size,) + values.shape[1:]).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=size).clamp_min(1).to(values.dtype)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


def level_positions(level0_pos: torch.Tensor, parents: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
    """Mean level-0 position (e.g. original coordinates) of every voxel of every level."""
    return [scatter_mean(level0_pos, p, n) for p, n in zip(parents, sizes)]


def upcast(levels: list[SparseTensor], parents: list[torch.Tensor], level: int) -> torch.Tensor:
    """Features of ``level`` with every coarser level's features concatenated (Sonata's feature up-casting).

    Each voxel of ``level`` gets its own features and those of the coarser voxels containing it, so a
    loss at a coarse level still trains the deepest stages, without a decoder.
    """
    n = len(levels[level])
    # any level-0 voxel inside each level voxel: the hierarchy is nested, so all give the same ancestors
    rep = torch.zeros(n, dtype=torch.long, device=parents[level].device)
    rep.scatter_(0, parents[level], torch.arange(parents[level].numel(), device=rep.device))
    parts = [levels[level].feats]
    for k in range(level + 1, len(levels)):
        parts.append(levels[k].feats[parents[k][rep]])
    return torch.cat(parts, dim=1)


def upcast_channels(channels: list[int], level: int) -> int:
    return sum(channels[level:])


def pool_per_scan(feats: torch.Tensor, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean feature per scan (B, C): the global feature of a view."""
    return scatter_mean(feats, batch, batch_size)


__all__ = [
    "cell_keys", "position_keys", "lookup", "match_positions", "level_parents", "scatter_mean",
    "level_positions", "upcast", "upcast_channels", "pool_per_scan",
]
