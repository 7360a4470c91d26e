"""Sparse 3D convolutions with two backends sharing one parameter layout.

* ``torch``: pure PyTorch gather-matmul-scatter on neighbour tables from ``kernel_maps`` (searched on
  small levels, derived from the coarser level on large ones); deterministic: on CPU one stable sorted
  scatter-add of all pairs' products, elsewhere per kernel offset an index_put (every output row occurs
  once per offset); hand-written backward; runs on every device, the training path on CPU.
* ``spconv``: spconv 2.x (the production path on CUDA; on CPU its wheel runs forward only).

Weights are stored exactly as spconv 2.x stores them, ``(C_out, k, k, k, C_in)``, so a state_dict loads
into either backend. Maps live in ``SparseTensor.cache`` keyed by ``(kind, stride, kernel)``; all levels
of one hierarchy share that dict, so every layer of a level reuses the maps built by the first one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .kernel_maps import (DownMap, SubmMap, build_down_map, build_subm_map, check_coord_range, downsample_coords,
                          lookup, pack_keys, subm_map_from_coarse)
from .sparse_kernels import DownConvFunction, SubmConvFunction
from .structure import SparseTensor

try:  # spconv is optional: the torch backend covers everything
    import spconv.pytorch as _spconv
    from spconv.cppconstants import CPU_ONLY_BUILD as _SPCONV_CPU_ONLY
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _spconv = None
    _SPCONV_CPU_ONLY = True

BACKENDS = ("auto", "torch", "spconv")


def spconv_available(device: torch.device | str | None = None) -> bool:
    """Whether spconv can run on ``device`` (CUDA needs a CUDA build of spconv)."""
    if _spconv is None:
        return False
    if device is not None and torch.device(device).type == "cuda":
        return not _SPCONV_CPU_ONLY
    return True


def resolve_backend(backend: str, device: torch.device | str, training: bool) -> str:
    """"auto" -> "spconv" when spconv runs on ``device`` and either the device is CUDA or no gradient is
    needed (spconv's CPU wheel has no backward); otherwise "torch". An explicit choice is honoured
    (and checked).

    On CPU, "auto" picks spconv only when torch runs single-threaded: spconv 2.3.8's multi-threaded
    CPU kernels race (outputs differ between identical runs; traveller59/spconv#679, reproduced here)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sparse conv backend {backend!r}; choose one of {BACKENDS}")
    dev = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "spconv":
        if not spconv_available(dev):
            raise RuntimeError(f"backend 'spconv' requested but spconv cannot run on {dev}")
        return "spconv"
    if spconv_available(dev) and (dev.type == "cuda" or (not training and torch.get_num_threads() == 1)):
        return "spconv"
    return "torch"


def _compute_dtype(feats: torch.Tensor) -> torch.dtype:
    """The autocast dtype on CUDA when autocast is on (convs are matmuls), else the features' dtype."""
    if feats.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return feats.dtype


def _needs_grad(x: SparseTensor, module: nn.Module) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.feats.requires_grad or any(p.requires_grad for p in module.parameters(recurse=False))


# ---------------------------------------------------------------- cached maps
# Levels with more voxels than this derive their neighbour table from the next coarser level (two
# gathers) instead of searching; the coarser levels are the encoder's own next levels, so nothing is
# built twice.
HIERARCHICAL_MIN_VOXELS = 4096


def level_keys(x: SparseTensor) -> torch.Tensor:
    """``pack_keys(x.coords)``, cached: a level made by a down map caches the keys the map computed."""
    key = ("keys", x.stride)
    keys = x.cache.get(key)
    if keys is None or keys.shape[0] != len(x):
        check_coord_range(x.coords)
        keys = pack_keys(x.coords)
        x.cache[key] = keys
    return keys


def subm_map(x: SparseTensor, kernel_size: int) -> SubmMap:
    """The level's neighbour table, from the cache or built (once) and cached."""
    key = ("subm", x.stride, kernel_size)
    m = x.cache.get(key)
    if m is not None and m.num_voxels == len(x):
        return m
    if kernel_size in (3, 5) and len(x) > HIERARCHICAL_MIN_VOXELS:
        coarse = coarser(x)
        if len(coarse) < 0.9 * len(x):  # pays off only when the coarser level is clearly smaller
            m = subm_map_from_coarse(down_map(x, 2), subm_map(coarse, 3), kernel_size)
    if m is None or m.num_voxels != len(x):
        m = build_subm_map(x.coords, kernel_size, level_keys(x))
    x.cache[key] = m
    return m


def down_map(x: SparseTensor, stride: int, coarse_coords: torch.Tensor | None = None) -> DownMap:
    """The map from level ``x`` to the level ``stride`` times coarser (cached in ``x.cache``, with the
    coarser level's keys)."""
    key = ("down", x.stride, stride)
    m = x.cache.get(key)
    if m is None or m.num_voxels != len(x):
        m = build_down_map(x.coords, stride, coarse_coords, keys=level_keys(x))
        x.cache[key] = m
        if m.coarse_keys is not None:
            x.cache[("keys", x.stride * stride)] = m.coarse_keys
    return m


def coarser(x: SparseTensor, stride: int = 2) -> SparseTensor:
    """The (feature-less) next level of ``x``'s hierarchy: coordinates and the shared cache."""
    dm = down_map(x, stride)
    feats = x.feats.new_zeros((dm.coarse_coords.shape[0], 0))
    return SparseTensor(feats, dm.coarse_coords, x.batch_size, x.stride * stride, x.cache)


# ---------------------------------------------------------------- spconv glue
def _spconv_level(x: SparseTensor, feats: torch.Tensor):
    """spconv tensor of this level, in our row order, coordinates shifted to be non-negative.

    The shift is a multiple of 8 so that spconv's stride-s output (s = 2, 4, 8) equals our
    ``floor(xyz / s)`` shifted by shift / s.
    The cached tensor accumulates spconv's index pairs so subm layers of a level reuse them."""
    key = ("spconv", x.stride)
    entry = x.cache.get(key)
    if entry is None or entry[0].indices.shape[0] != len(x):
        c = x.coords.int()
        lo = c[:, 1:].amin(0) if len(x) else torch.zeros(3, dtype=torch.int32, device=c.device)
        shift = -torch.div(lo, 8, rounding_mode="floor") * 8
        idx = c.clone()
        idx[:, 1:] += shift
        hi = idx[:, 1:].amax(0) if len(x) else torch.zeros(3, dtype=torch.int32, device=c.device)
        shape = [int(v) for v in (torch.div(hi, 8, rounding_mode="floor") + 1) * 8]
        base = _spconv.SparseConvTensor(feats[:, :0].float(), idx.contiguous(), shape, x.batch_size)
        entry = (base, shift)
        x.cache[key] = entry
    base, _ = entry
    return base.replace_feature(feats.contiguous()), entry


def _spconv_down(x: SparseTensor, stride: int, feats: torch.Tensor | None, spmod=None, weight=None,
                 training: bool = False) -> tuple:
    """Run spconv's strided conv; returns (spconv output tensor, row of our coarse order per spconv row).

    ``feats=None`` runs a 1-channel dummy conv only to create the index pairs an inverse conv needs."""
    t, (base, shift) = _spconv_level(x, feats if feats is not None else x.feats.new_zeros((len(x), 1)).float())
    ikey = f"down_s{x.stride}_k{stride}"
    t.indice_dict = {k: v for k, v in base.indice_dict.items() if k != ikey}
    if feats is None:
        spmod = _spconv.SparseConv3d(1, 1, stride, stride=stride, bias=False, indice_key=ikey).to(x.device)
        out = spmod._conv_forward(False, t, spmod.weight.detach(), None)
    else:
        out = spmod._conv_forward(training, t, weight, None)
    dm = down_map(x, stride)
    ours = out.indices.long().clone()
    ours[:, 1:] -= torch.div(shift, stride, rounding_mode="floor").long()
    rows = lookup(pack_keys(ours), pack_keys(dm.coarse_coords))
    x.cache[("spconv_down", x.stride, stride)] = (out, rows)
    return out, rows


# ---------------------------------------------------------------- modules
class _SparseConvBase(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool, backend: str) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown sparse conv backend {backend!r}; choose one of {BACKENDS}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.backend = backend
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = in_channels * k ** 3
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound * math.sqrt(3), bound * math.sqrt(3))  # kaiming-uniform, gain 1
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def kernel_volume(self) -> int:
        return self.kernel_size ** 3

    def _weight_kio(self, dtype: torch.dtype) -> torch.Tensor:
        """(K, C_in, C_out) view of the spconv-layout weight."""
        w = self.weight.to(dtype)
        return w.reshape(self.out_channels, self.kernel_volume, self.in_channels).permute(1, 2, 0).contiguous()

    def resolved_backend(self, x: SparseTensor) -> str:
        return resolve_backend(self.backend, x.device, _needs_grad(x, self))

    def _spconv_module(self, **kwargs):
        """spconv module used only for its forward code; our own Parameter is passed in, never its own.
        Kept out of the module tree so state_dicts stay backend-independent."""
        mod = self.__dict__.get("_spmod")
        if mod is None:
            mod = self._make_spconv(**kwargs)
            self.__dict__["_spmod"] = mod
        return mod

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}, backend={self.backend!r}")


class SubMConv3d(_SparseConvBase):
    """Submanifold conv: output voxels = input voxels; ``out[p] = b + sum_d W[d] in[p + d]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True,
                 backend: str = "auto") -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"SubMConv3d needs an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, bias, backend)

    def _make_spconv(self):
        return _spconv.SubMConv3d(self.in_channels, self.out_channels, self.kernel_size, bias=False,
                                  indice_key=None)

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = x.replace_feats(x.feats.to(_compute_dtype(x.feats)))
        # kernel 1 is a per-voxel matmul with no spatial part; spconv's own 1x1 shortcut reads the
        # (C_out, 1, 1, 1, C_in) weight as (C_in, C_out), so both backends use the plain matmul
        if self.kernel_volume > 1 and self.resolved_backend(x) == "spconv":
            return x.replace_feats(self._forward_spconv(x))
        return x.replace_feats(self._forward_torch(x))

    def _forward_torch(self, x: SparseTensor) -> torch.Tensor:
        feats = x.feats
        if len(x) == 0:
            return feats.new_zeros((0, self.out_channels))
        m = subm_map(x, self.kernel_size) if self.kernel_volume > 1 else None
        bias = None if self.bias is None else self.bias.to(feats.dtype)
        # without a backward to follow, the forward may use the map's cheaper unordered pairs
        return SubmConvFunction.apply(feats, self._weight_kio(feats.dtype), bias, m, not _needs_grad(x, self))

    def _forward_spconv(self, x: SparseTensor) -> torch.Tensor:
        spmod = self._spconv_module()
        spmod.indice_key = f"subm_s{x.stride}_k{self.kernel_size}"
        t, (base, _) = _spconv_level(x, x.feats)
        # bias added here: spconv's CPU kernels reject a fused bias
        out = spmod._conv_forward(_needs_grad(x, self), t, self.weight.to(x.feats.dtype), None)
        base.indice_dict.update(out.indice_dict)  # later layers of this level reuse spconv's pairs
        if self.bias is None:
            return out.features
        return out.features + self.bias.to(out.features.dtype)


class SparseDownConv3d(_SparseConvBase):
    """Strided conv with kernel == stride onto ``downsample_coords`` of the input (no bias: a norm follows).

    Output rows are in the order of ``downsample_coords`` for both backends."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2,
                 backend: str = "auto") -> None:
        if kernel_size != stride:
            raise ValueError(f"SparseDownConv3d supports kernel_size == stride (non-overlapping), got {kernel_size}, {stride}")
        super().__init__(in_channels, out_channels, kernel_size, False, backend)
        self.stride = stride

    def _make_spconv(self):
        return _spconv.SparseConv3d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                                    bias=False)

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = x.replace_feats(x.feats.to(_compute_dtype(x.feats)))
        dm = down_map(x, self.stride)
        if self.resolved_backend(x) == "spconv":
            feats = self._forward_spconv(x, dm)
        else:
            feats = self._forward_torch(x, dm)
        return SparseTensor(feats, dm.coarse_coords, x.batch_size, x.stride * self.stride, x.cache)

    def _forward_torch(self, x: SparseTensor, dm: DownMap) -> torch.Tensor:
        return DownConvFunction.apply(x.feats, self._weight_kio(x.feats.dtype), dm)

    def _forward_spconv(self, x: SparseTensor, dm: DownMap) -> torch.Tensor:
        spmod = self._spconv_module()
        spmod.indice_key = f"down_s{x.stride}_k{self.stride}"
        out, rows = _spconv_down(x, self.stride, x.feats, spmod, self.weight.to(x.feats.dtype), _needs_grad(x, self))
        feats = out.features.new_empty((dm.coarse_coords.shape[0], self.out_channels))
        feats[rows] = out.features
        return feats


class SparseInverseConv3d(_SparseConvBase):
    """Transposed strided conv: from a coarse level back onto the finer level's stored coordinates.

    ``forward(x, target)``: ``x`` is the coarse tensor, ``target`` the fine level (its coords and cache;
    its features are ignored). ``x``'s rows must be in ``downsample_coords(target.coords)`` order, which
    is what SparseDownConv3d produces."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int | None = None,
                 bias: bool = False, backend: str = "auto") -> None:
        stride = kernel_size if stride is None else stride
        if kernel_size != stride:
            raise ValueError(f"SparseInverseConv3d supports kernel_size == stride, got {kernel_size}, {stride}")
        super().__init__(in_channels, out_channels, kernel_size, bias, backend)
        self.stride = stride

    def _make_spconv(self):
        return _spconv.SparseInverseConv3d(self.in_channels, self.out_channels, self.kernel_size, indice_key="x",
                                           bias=False)

    def forward(self, x: SparseTensor, target: SparseTensor) -> SparseTensor:
        x = x.replace_feats(x.feats.to(_compute_dtype(x.feats)))
        dm = down_map(target, self.stride, x.coords)
        if dm.coarse_coords.shape[0] != len(x):
            raise ValueError(f"coarse tensor has {len(x)} voxels, the target's parents are {dm.coarse_coords.shape[0]}")
        if self.resolved_backend(x) == "spconv":
            feats = self._forward_spconv(x, target)
        else:
            # each fine voxel has exactly one parent: project the coarse features for all s^3 offsets in one
            # matmul on the (smaller) coarse level, then pick each fine voxel's row; no scatter needed
            w = self._weight_kio(x.feats.dtype)  # (K, C_in, C_out)
            proj = x.feats @ w.permute(1, 0, 2).reshape(self.in_channels, -1)  # (Mc, K * C_out)
            feats = proj.view(-1, self.out_channels).index_select(0, dm.parent * self.kernel_volume + dm.offset)
        if self.bias is not None:
            feats = feats + self.bias.to(feats.dtype)
        return SparseTensor(feats, target.coords, target.batch_size, target.stride, target.cache)

    def _forward_spconv(self, x: SparseTensor, target: SparseTensor) -> torch.Tensor:
        entry = target.cache.get(("spconv_down", target.stride, self.stride))
        if entry is None or entry[1].shape[0] != len(x):
            entry = _spconv_down(target, self.stride, None)
        out, rows = entry
        spmod = self._spconv_module()
        spmod.indice_key = f"down_s{target.stride}_k{self.stride}"
        t = out.replace_feature(x.feats.index_select(0, rows).contiguous())
        res = spmod._conv_forward(_needs_grad(x, self), t, self.weight.to(x.feats.dtype), None)
        return res.features


__all__ = [
    "BACKENDS", "SparseDownConv3d", "SparseInverseConv3d", "SparseTensor", "SubMConv3d", "coarser",
    "down_map", "downsample_coords", "level_keys", "resolve_backend", "spconv_available", "subm_map",
]
