"""Index maps of sparse convolutions, vectorised (no Python loops over voxels).

Voxel keys pack ``[batch, x, y, z]`` into one int64 (so scans of a batch never meet). Small levels find
neighbours by ``searchsorted`` into their sorted keys (``build_subm_map``); large levels derive their
neighbour table from the next coarser level's with two gathers (``subm_map_from_coarse``), which is
several times cheaper than searching. Maps follow spconv 2.x semantics exactly, so one weight tensor of shape
``(C_out, k, k, k, C_in)`` means the same thing in both backends:

* submanifold conv: ``out[p] = sum_d W[idx(d)] @ in[p + d]`` with ``d`` in ``[-r, r]^3`` and
  ``idx(d) = ((dx + r) * k + (dy + r)) * k + (dz + r)`` (cross-correlation, x-major);
* strided conv with kernel == stride == s: ``out[q] = sum_o W[idx(o)] @ in[s * q + o]``, ``o`` in ``[0, s)^3``;
* inverse conv: ``out[p] = W[idx(p - s * q)] @ in[q]`` with ``q = floor(p / s)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

COORD_BITS = 18  # per spatial axis: +-131k voxels (13 km at 0.1 m)
COORD_OFFSET = 1 << (COORD_BITS - 1)
BATCH_BITS = 63 - 3 * COORD_BITS  # 9 bits: up to 512 scans in a batch
_AXIS_MASK = (1 << COORD_BITS) - 1


def check_coord_range(coords: torch.Tensor, margin: int = 2) -> None:
    """Raise ValueError when coordinates do not fit the key packing (with room for kernel offsets)."""
    if coords.numel() == 0:
        return
    lows, highs = torch.aminmax(coords, dim=0)  # one pass over all columns
    lows, highs = lows.tolist(), highs.tolist()
    lo = min(lows[1:])
    hi = max(highs[1:])
    limit = COORD_OFFSET - margin
    if lo < -limit or hi >= limit:
        raise ValueError(f"voxel coordinates [{lo}, {hi}] exceed the supported range +-{limit}; use a larger voxel size")
    bmax = highs[0]
    if lows[0] < 0 or bmax >= (1 << BATCH_BITS):
        raise ValueError(f"batch index must be in [0, {1 << BATCH_BITS}), got max {bmax}")


def pack_keys(coords: torch.Tensor) -> torch.Tensor:
    """(M, 4) [batch, x, y, z] -> (M,) int64 keys; sorting keys sorts by batch, then x, y, z."""
    c = coords.long()
    key = c[:, 0] << COORD_BITS | (c[:, 1] + COORD_OFFSET)
    key = key << COORD_BITS | (c[:, 2] + COORD_OFFSET)
    return key << COORD_BITS | (c[:, 3] + COORD_OFFSET)


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_keys -> (M, 4) int32."""
    z = (keys & _AXIS_MASK) - COORD_OFFSET
    y = ((keys >> COORD_BITS) & _AXIS_MASK) - COORD_OFFSET
    x = ((keys >> (2 * COORD_BITS)) & _AXIS_MASK) - COORD_OFFSET
    b = keys >> (3 * COORD_BITS)
    return torch.stack([b, x, y, z], dim=1).to(torch.int32)


def lookup(query_keys: torch.Tensor, keys: torch.Tensor, sorted_keys: torch.Tensor | None = None,
           order: torch.Tensor | None = None) -> torch.Tensor:
    """Row index in ``keys`` of every query key, -1 where absent."""
    if sorted_keys is None:
        sorted_keys, order = torch.sort(keys)
    if len(sorted_keys) == 0:
        return torch.full_like(query_keys, -1)
    pos = torch.searchsorted(sorted_keys, query_keys).clamp_(max=len(sorted_keys) - 1)
    found = sorted_keys[pos] == query_keys
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def downsample_coords(coords: torch.Tensor, stride: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse voxels ``floor(xyz / stride)`` (unique, sorted by key) and each fine voxel's parent row.

    Returns ``(coarse_coords (Mc, 4) int32, parent_index (M,) int64)``. A subset of voxels always maps
    into a subset of the full set's coarse voxels, so masked views nest in the full scene's hierarchy.
    """
    check_coord_range(coords)
    coarse_keys, parent = downsample_keys(pack_keys(coords), stride)
    return unpack_keys(coarse_keys), parent


def coarse_keys_of(keys: torch.Tensor, stride: int) -> torch.Tensor:
    """``pack_keys`` of ``floor(xyz / stride)`` computed on packed keys.

    For a power-of-two stride ``2^j`` all three fields shift at once: field ``f = x + COORD_OFFSET``
    gives ``(f >> j) + COORD_OFFSET - (COORD_OFFSET >> j) = floor(x / 2^j) + COORD_OFFSET`` (no carry
    between fields), a few int64 passes instead of unpacking, an int64 division and repacking."""
    if stride & (stride - 1):
        c = unpack_keys(keys).long()
        xyz = torch.div(c[:, 1:], stride, rounding_mode="floor")
        return pack_keys(torch.cat([c[:, :1], xyz], dim=1))
    j = stride.bit_length() - 1
    low = (1 << (COORD_BITS - j)) - 1
    add = COORD_OFFSET - (COORD_OFFSET >> j)
    field_mask = low | low << COORD_BITS | low << 2 * COORD_BITS
    field_add = add | add << COORD_BITS | add << 2 * COORD_BITS
    batch_mask = -1 << 3 * COORD_BITS
    return ((keys >> j) & field_mask).add_(field_add).bitwise_or_(keys & batch_mask)


def downsample_keys(keys: torch.Tensor, stride: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``downsample_coords`` on packed keys: (sorted unique coarse keys, parent row of every fine key)."""
    return torch.unique(coarse_keys_of(keys, stride), sorted=True, return_inverse=True)


class _PairList:
    """A conv's (input row, output row) pairs grouped by kernel offset, built lazily by ``_grouped``."""

    def _grouped(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        raise NotImplementedError

    @property
    def in_idx(self) -> torch.Tensor:
        """(P,) input rows of all pairs, grouped by kernel offset."""
        return self._grouped()[0]

    @property
    def out_idx(self) -> torch.Tensor:
        """(P,) output rows, same order as in_idx."""
        return self._grouped()[1]

    @property
    def counts(self) -> list[int]:
        """Pairs per kernel offset (the centre entry of a submanifold map is 0: a plain matmul)."""
        return self._grouped()[2]

    def unordered_pairs(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(in_idx, out_idx, counts) grouped by kernel offset like ``_grouped``, in any order within an
        offset: for users whose result does not depend on it (a sum per output row in offset order)."""
        return self._grouped()


@dataclass
class SubmMap(_PairList):
    """Neighbours of a submanifold conv: a dense (M, k^3) table (M marks "no neighbour"), plus, built on
    first use, the pairs grouped by kernel offset (the centre offset is implicit)."""

    table: torch.Tensor  # (M, k^3) int32 input row per (output row, kernel offset), M where empty
    kernel_size: int
    num_voxels: int
    _pairs: tuple | None = None
    _mirrored: tuple | None = None

    def _grouped(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        if self._pairs is None:
            m = self.num_voxels
            kvol = self.kernel_size ** 3
            by_offset = self.table.t().contiguous()  # (K, M)
            by_offset[kvol // 2] = m  # the centre offset is handled as a plain matmul
            present = by_offset < m
            hit = present.view(-1).nonzero().squeeze(1)  # ordered by offset, then output row
            in_idx = by_offset.view(-1).index_select(0, hit)
            out_idx = (hit % m).to(self.table.dtype) if m else hit.to(self.table.dtype)
            self._pairs = (in_idx, out_idx, present.sum(1).tolist())
        return self._pairs

    def unordered_pairs(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The map is symmetric (q is p's neighbour at d iff p is q's at -d, and offset index k of d is
        K-1-k of -d), so only the offsets before the centre are searched for pairs; each later offset's
        pairs are an earlier one's with in and out swapped (ordered by input row, not output row).
        Half the compaction work of ``_grouped``; the ordered pairs are reused where already built."""
        if self._pairs is not None:
            return self._pairs
        if self._mirrored is None:
            m = self.num_voxels
            half = self.kernel_size ** 3 // 2
            by_offset = self.table.t()[:half].contiguous()  # (K // 2, M)
            present = by_offset < m
            hit = present.view(-1).nonzero().squeeze(1)
            in_idx = by_offset.view(-1).index_select(0, hit)
            out_idx = (hit % m).to(self.table.dtype) if m else hit.to(self.table.dtype)
            counts = present.sum(1).tolist()
            ins, outs = list(in_idx.split(counts)), list(out_idx.split(counts))
            self._mirrored = (torch.cat(ins + outs[::-1]), torch.cat(outs + ins[::-1]), counts + [0] + counts[::-1])
        return self._mirrored


@dataclass
class DownMap(_PairList):
    """Fine -> coarse map of a kernel == stride conv; serves the strided conv and its inverse."""

    coarse_coords: torch.Tensor  # (Mc, 4) int32
    parent: torch.Tensor  # (M,) int64 coarse row of every fine voxel
    offset: torch.Tensor  # (M,) int64 kernel offset index of every fine voxel inside its parent
    child: torch.Tensor  # (Mc * s^3,) int64 fine row per (parent, offset), M (a zero row) where empty
    stride: int
    num_voxels: int
    coarse_keys: torch.Tensor | None = None  # (Mc,) pack_keys(coarse_coords) where the map computed them
    _pairs: tuple | None = None

    def _grouped(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        if self._pairs is None:
            kvol = self.stride ** 3
            # offsets are < 8 (stride 2) or < 64 (stride 4): a uint8 stable sort is ~3x cheaper than int64
            key = self.offset.to(torch.uint8) if kvol <= 256 else self.offset
            offset, fine = torch.sort(key, stable=True)
            counts = torch.bincount(offset.long(), minlength=kvol).tolist()
            self._pairs = (fine.int(), self.parent.index_select(0, fine).int(), counts)
        return self._pairs


def build_subm_map(coords: torch.Tensor, kernel_size: int = 3, keys: torch.Tensor | None = None) -> SubmMap:
    """The neighbour table of a k^3 submanifold conv on ``coords`` (``keys``: their pack_keys, if known).

    Sort the keys once. The map is symmetric (q is p's neighbour at d iff p is q's at -d), so only half
    of the (dx, dy) columns are searched; each column needs one searchsorted, because the keys of a
    z-window [z - r, z + r] of one column are consecutive in sorted order.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"submanifold kernels must be odd, got {kernel_size}")
    check_coord_range(coords, margin=kernel_size)
    device = coords.device
    m = coords.shape[0]
    k = kernel_size
    r = k // 2
    kvol = k ** 3
    centre = kvol // 2
    # int32 indices: half the memory traffic of int64 in the gathers that dominate map building
    table = torch.full((m, kvol), m, dtype=torch.int32, device=device)
    table[:, centre] = torch.arange(m, device=device, dtype=torch.int32)
    if m == 0 or r == 0:
        return SubmMap(table=table, kernel_size=k, num_voxels=m)
    keys = pack_keys(coords) if keys is None else keys
    # levels made by downsample_coords are already sorted: skip the sort and the permutations
    presorted = bool((keys[1:] > keys[:-1]).all())
    sorted_keys, order = (keys, None) if presorted else torch.sort(keys)
    s1 = 1 << COORD_BITS
    s2 = 1 << (2 * COORD_BITS)
    # Work in sorted order: every column's queries are then ascending, which keeps searchsorted and the
    # gathers cache-friendly (random-order queries cost several times more).
    cols = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if dx > 0 or (dx == 0 and dy > 0)]
    shift = torch.tensor([dx * s2 + dy * s1 - r for dx, dy in cols], device=device)
    base = torch.tensor([((dx + r) * k + (dy + r)) * k for dx, dy in cols], device=device)
    q0 = sorted_keys[None, :] + shift[:, None]  # (C, M): lowest key of each column window
    cand = torch.searchsorted(sorted_keys, q0)[..., None] + torch.arange(k, device=device)  # (C, M, k)
    delta = sorted_keys[cand.clamp(max=m - 1)] - q0[..., None]
    hit = ((cand < m) & (delta >= 0) & (delta < k)).view(-1).nonzero().squeeze(1)
    out_s = torch.div(hit, k, rounding_mode="floor") % m
    in_s = cand.view(-1)[hit]
    off = base[torch.div(hit, m * k, rounding_mode="floor")] + delta.view(-1)[hit]
    # the centre column, dz > 0: candidates are the next r keys in sorted order
    ar = torch.arange(m, device=device)
    cand = ar[:, None] + torch.arange(1, r + 1, device=device)
    dz = sorted_keys[cand.clamp(max=m - 1)] - sorted_keys[:, None]
    hit = ((cand < m) & (dz >= 1) & (dz <= r)).view(-1).nonzero().squeeze(1)
    out_s = torch.cat([out_s, torch.div(hit, r, rounding_mode="floor")])
    in_s = torch.cat([in_s, cand.view(-1)[hit]])
    off = torch.cat([off, centre + dz.view(-1)[hit]])
    if order is not None:  # sorted positions -> input rows
        out_s, in_s = order[out_s], order[in_s]
    flat = table.view(-1)
    flat[out_s * kvol + off] = in_s.int()
    flat[in_s * kvol + (kvol - 1 - off)] = out_s.int()  # mirror: (p, q, d) -> (q, p, -d)
    return SubmMap(table=table, kernel_size=k, num_voxels=m)


def subm_map_from_coarse(down: DownMap, coarse: SubmMap, kernel_size: int = 3) -> SubmMap:
    """Derive a level's k^3 neighbour table (k = 3 or 5) from the next coarser level's 3^3 table.

    The neighbour at p + d lies in the coarse voxel parent(p) + floor((local(p) + d) / 2), a 3^3
    neighbour of parent(p), at child offset (local(p) + d) mod 2. So the fine table is two gathers,
    with no search: only the coarsest levels (few voxels) are searched (build_subm_map).
    """
    if down.stride != 2 or coarse.kernel_size != 3 or kernel_size not in (3, 5):
        raise ValueError("derivation needs a stride-2 down map, a 3^3 coarse table and k in (3, 5)")
    device = down.parent.device
    r = kernel_size // 2
    kvol = kernel_size ** 3
    m = down.num_voxels
    mc = coarse.num_voxels
    rng = torch.arange(-r, r + 1, device=device)
    d = torch.stack(torch.meshgrid(rng, rng, rng, indexing="ij"), -1).view(-1, 3)  # (K, 3) fine offsets
    bits = torch.tensor([0, 1], device=device)
    local = torch.stack(torch.meshgrid(bits, bits, bits, indexing="ij"), -1).view(-1, 3)  # (8, 3)
    s = local[:, None, :] + d[None, :, :]  # (8, K, 3)
    e = torch.div(s, 2, rounding_mode="floor")
    o = s - 2 * e
    coarse_idx = (((e[..., 0] + 1) * 3 + (e[..., 1] + 1)) * 3 + (e[..., 2] + 1)).int()  # (8, K) into the 3^3 table
    child_off = ((o[..., 0] * 2 + o[..., 1]) * 2 + o[..., 2]).int()  # (8, K) into the parent's 2^3 children
    coarse_pad = torch.cat([coarse.table, coarse.table.new_full((1, 27), mc)]).view(-1)
    child_pad = torch.cat([down.child, down.child.new_full((8,), m)]).int()
    # flat 1-D gathers (index_select) with int32 indices, updated in place: multi-dimensional advanced
    # indexing, int64 arithmetic and fresh (M, K) temporaries are several times slower on CPU
    local = down.offset
    idx = coarse_idx.index_select(0, local).add_(down.parent.int().mul_(27)[:, None])  # (M, K)
    nb_parent = coarse_pad.index_select(0, idx.view(-1))
    idx = child_off.index_select(0, local).view(-1).add_(nb_parent.mul_(8))
    table = child_pad.index_select(0, idx).view(m, kvol)
    return SubmMap(table=table, kernel_size=kernel_size, num_voxels=m)


def build_down_map(coords: torch.Tensor, stride: int = 2, coarse_coords: torch.Tensor | None = None,
                   keys: torch.Tensor | None = None) -> DownMap:
    """Map of a kernel == stride conv from ``coords`` onto ``coarse_coords`` (default: downsample_coords).

    ``keys``: ``pack_keys(coords)`` when the caller has them already (levels cache their keys)."""
    if keys is None:
        check_coord_range(coords)
        keys = pack_keys(coords)
    coarse_keys = None
    if coarse_coords is None:
        coarse_keys, parent = downsample_keys(keys, stride)
        coarse_coords = unpack_keys(coarse_keys)
    else:
        parent = lookup(coarse_keys_of(keys, stride), pack_keys(coarse_coords))
        if bool((parent < 0).any()):
            raise ValueError("coarse coordinates do not contain every parent of the fine voxels")
    c = coords[:, 1:]
    local = c & (stride - 1) if stride & (stride - 1) == 0 else torch.remainder(c, stride)
    offset = ((local[:, 0] * stride + local[:, 1]) * stride + local[:, 2]).long()
    kvol = stride ** 3
    m = coords.shape[0]
    child = torch.full((coarse_coords.shape[0] * kvol,), m, dtype=torch.long, device=coords.device)
    child.index_copy_(0, parent * kvol + offset, torch.arange(m, device=coords.device))  # distinct slots
    return DownMap(coarse_coords=coarse_coords, parent=parent, offset=offset, child=child, stride=stride, num_voxels=m,
                   coarse_keys=coarse_keys)


__all__ = [
    "COORD_BITS", "DownMap", "SubmMap", "build_down_map", "build_subm_map", "check_coord_range",
    "coarse_keys_of", "downsample_coords", "downsample_keys", "lookup", "pack_keys", "unpack_keys",
]
