"""Space-filling-curve serialization and patch partition of a sparse level (as Point Transformer V3).

Voxels are ordered along a curve (z-order or Hilbert, optionally with x and y swapped: the "-trans"
variants), per scan: the batch index is the most significant part of the code, and coordinates are
shifted by each scan's own minimum, so a scan's order never depends on the other scans of a batch.
Patches are consecutive runs of ``patch_size`` voxels of one scan; a scan's last patch is shorter and
padded with masked slots, so no patch ever mixes two scans.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CURVE_BITS = 16  # per axis at a level; larger extents are clamped (only the order quality suffers)
ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between the low 21 bits of v (for 3-D Morton codes)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def morton_code(xyz: torch.Tensor) -> torch.Tensor:
    """(M, 3) non-negative int64 -> (M,) z-order code (x most significant)."""
    return _spread_bits(xyz[:, 0]) << 2 | _spread_bits(xyz[:, 1]) << 1 | _spread_bits(xyz[:, 2])


def hilbert_code(xyz: torch.Tensor, bits: int = CURVE_BITS) -> torch.Tensor:
    """(M, 3) non-negative int64 < 2**bits -> (M,) Hilbert index (Skilling's transpose algorithm).

    Loops run over bits and axes (constants), each step a vectorised op over all voxels."""
    x = [xyz[:, i].clone() for i in range(3)]
    m = 1 << (bits - 1)
    q = m
    while q > 1:  # inverse undo of excess work
        p = q - 1
        for i in range(3):
            hit = (x[i] & q) != 0
            # if bit set: invert low bits of x[0]; else exchange low bits of x[0] and x[i]
            t = (x[0] ^ x[i]) & p
            x0_inv = x[0] ^ p
            x0_swp = x[0] ^ t
            xi_swp = x[i] ^ t
            if i == 0:
                x[0] = torch.where(hit, x0_inv, x[0])
            else:
                x[0] = torch.where(hit, x0_inv, x0_swp)
                x[i] = torch.where(hit, x[i], xi_swp)
        q >>= 1
    for i in range(1, 3):  # Gray encode
        x[i] = x[i] ^ x[i - 1]
    t = torch.zeros_like(x[0])
    q = m
    while q > 1:
        t = torch.where((x[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [xi ^ t for xi in x]
    # interleave the transposed form: bit b of x[0], x[1], x[2] -> 3 consecutive bits, x[0] highest
    return morton_code(torch.stack(x, dim=1))

def serialization_code(coords: torch.Tensor, order: str, batch_size: int) -> torch.Tensor:
    """(M, 4) [batch, x, y, z] -> (M,) int64 code; sorting it groups by scan, then follows the curve."""
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; choose from {ORDERS}")
    c = coords.long()
    batch = c[:, 0]
    xyz = c[:, 1:]
    lo = torch.full((batch_size, 3), torch.iinfo(torch.int64).max, device=c.device, dtype=torch.long)
    lo = lo.scatter_reduce(0, batch[:, None].expand(-1, 3), xyz, reduce="amin", include_self=True)
    xyz = (xyz - lo[batch]).clamp_(0, (1 << CURVE_BITS) - 1)
    if order.endswith("-trans"):
        xyz = xyz[:, [1, 0, 2]]
    if order.startswith("z"):
        code = morton_code(xyz)
    else:  # Hilbert costs O(bits) passes: use only as many bits as this level's extent needs
        bits = max(1, int(xyz.max()).bit_length()) if len(xyz) else 1
        code = hilbert_code(xyz, bits)
    return batch << (3 * CURVE_BITS) | code


@dataclass
class PatchLayout:
    """Where every voxel sits in the (num_patches, patch_size) grid of one serialization."""

    slot: torch.Tensor  # (M,) flat slot index in [0, num_patches * patch_size)
    valid: torch.Tensor  # (num_patches, patch_size) bool: slot holds a voxel
    num_patches: int
    patch_size: int


def patch_layout(coords: torch.Tensor, order: str, batch_size: int, patch_size: int) -> PatchLayout:
    code = serialization_code(coords, order, batch_size)
    perm = torch.argsort(code, stable=True)  # voxels in curve order, scans contiguous
    m = coords.shape[0]
    batch = coords[:, 0].long()
    counts = torch.bincount(batch, minlength=batch_size)
    starts = torch.cumsum(counts, 0) - counts
    patches_per_scan = torch.div(counts + patch_size - 1, patch_size, rounding_mode="floor")
    patch_starts = torch.cumsum(patches_per_scan, 0) - patches_per_scan
    num_patches = int(patches_per_scan.sum())
    sorted_batch = batch[perm]
    rank = torch.arange(m, device=coords.device) - starts[sorted_batch]  # position inside its scan
    slot_sorted = (patch_starts[sorted_batch] + torch.div(rank, patch_size, rounding_mode="floor")) * patch_size \
        + rank % patch_size
    slot = torch.empty_like(slot_sorted)
    slot[perm] = slot_sorted
    valid = torch.zeros(num_patches * patch_size, dtype=torch.bool, device=coords.device)
    valid[slot] = True
    return PatchLayout(slot=slot, valid=valid.view(num_patches, patch_size), num_patches=num_patches,
                       patch_size=patch_size)


__all__ = ["ORDERS", "PatchLayout", "hilbert_code", "morton_code", "patch_layout", "serialization_code"]
