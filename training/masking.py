"""Patch masking on voxel coordinates, shared by every masking recipe.

A patch is a cell of a randomly offset grid of edge ``patch_size`` metres over a view's voxels.
``sample_patches`` picks an exact fraction of each scan's patches: uniformly, or (for attention-driven
masking) with probability rising with a per-patch score, via Gumbel top-k so that sampling without
replacement stays vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .hierarchy import cell_keys


@dataclass
class Patches:
    of_voxel: torch.Tensor  # (M,) patch id of every voxel
    batch: torch.Tensor  # (P,) scan of every patch
    cell: torch.Tensor  # (P, 3) integer grid cell of every patch
    size: float  # patch edge, metres
    offset: torch.Tensor  # (3,) grid offset, metres

    def __len__(self) -> int:
        return self.batch.numel()

    @property
    def cell_center(self) -> torch.Tensor:
        """Centre of each patch's grid cell: where a patch is, without how its points lie inside it."""
        return (self.cell.to(self.offset.dtype) + 0.5) * self.size + self.offset


def make_patches(pos: torch.Tensor, batch: torch.Tensor, patch_size: float, generator: torch.Generator | None = None) -> Patches:
    offset = torch.rand(3, generator=generator, device=generator.device if generator else "cpu").to(pos.device) * patch_size
    cells = torch.floor((pos - offset) / patch_size).long()
    keys = cell_keys(batch, cells)
    unique_keys, of_voxel = torch.unique(keys, sorted=True, return_inverse=True)
    p = unique_keys.numel()
    first = torch.full((p,), len(keys), dtype=torch.long, device=pos.device)
    first.scatter_reduce_(0, of_voxel, torch.arange(len(keys), device=pos.device), reduce="amin")
    return Patches(of_voxel, batch[first], cells[first], patch_size, offset.to(pos.dtype))


def sample_patches(
    patch_batch: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
    scores: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Boolean (P,): round(ratio * n_b) patches of every scan b, at least one kept visible.

    With ``scores`` the chance of a patch being picked follows softmax(scores / temperature) within its
    scan (Gumbel top-k = sampling without replacement); without, the choice is uniform.
    """
    p = patch_batch.numel()
    device = patch_batch.device
    if p == 0:
        return torch.zeros(0, dtype=torch.bool, device=device)
    u = torch.rand(p, generator=generator, device=generator.device if generator else "cpu").to(device)
    key = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-7)))  # Gumbel noise
    if scores is not None:
        key = key + scores.float() / max(temperature, 1e-6)
    # Rank patches within each scan by descending key: sort by key, then stably by scan.
    order = torch.argsort(key, descending=True)
    order = order[torch.argsort(patch_batch[order], stable=True)]
    counts = torch.bincount(patch_batch, minlength=int(patch_batch.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(p, dtype=torch.long, device=device)
    rank[order] = torch.arange(p, device=device) - starts[patch_batch[order]]
    n_masked = torch.clamp(torch.round(counts.float() * ratio).long(), max=(counts - 1).clamp_min(0))
    return rank < n_masked[patch_batch]


def patch_mask(
    pos: torch.Tensor,
    batch: torch.Tensor,
    patch_size: float,
    ratio: float,
    generator: torch.Generator | None = None,
    scores: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, Patches, torch.Tensor]:
    """(voxel mask, patches, patch mask). ``scores`` are per voxel; a patch scores their mean."""
    patches = make_patches(pos, batch, patch_size, generator)
    patch_scores = None
    if scores is not None:
        sums = torch.zeros(len(patches), device=pos.device).index_add_(0, patches.of_voxel, scores.float())
        patch_scores = sums / torch.bincount(patches.of_voxel, minlength=len(patches)).clamp_min(1)
    masked_patch = sample_patches(patches.batch, ratio, generator, patch_scores, temperature)
    return masked_patch[patches.of_voxel], patches, masked_patch


def jitter_masked_coords(
    coords: torch.Tensor, masked: torch.Tensor, sigma_voxels: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move masked voxels by Gaussian noise (in voxels) and drop those landing on an occupied cell.

    Returns (new coords, kept rows). Sonata jitters masked points harder so that their exact
    geometry cannot be copied through the mask tokens' positions. Unmasked voxels always win a
    collision, so the visible part of the view is unchanged.
    """
    noise = torch.randn(coords.shape[0], 3, generator=generator, device=generator.device if generator else "cpu")
    step = torch.round(noise.to(coords.device) * sigma_voxels).to(coords.dtype)
    moved = coords.clone()
    moved[:, 1:] += torch.where(masked.unsqueeze(1), step, torch.zeros_like(step))
    moved[:, 1:] = moved[:, 1:].clamp_min(0)
    keys = cell_keys(moved[:, 0], moved[:, 1:])
    # priority: unmasked rows first, then row order
    priority = masked.long() * coords.shape[0] + torch.arange(coords.shape[0], device=coords.device)
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    winner = torch.full((unique_keys.numel(),), 2 * coords.shape[0] + 1, dtype=torch.long, device=coords.device)
    winner.scatter_reduce_(0, inverse, priority, reduce="amin")
    kept = torch.zeros(coords.shape[0], dtype=torch.bool, device=coords.device)
    kept[winner % coords.shape[0]] = True
    return moved, kept


__all__ = ["Patches", "make_patches", "sample_patches", "patch_mask", "jitter_masked_coords"]
