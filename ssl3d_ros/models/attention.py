"""Serialized patch attention (Point Transformer V3 style) on a sparse level.

Tokens are the voxels of one level, ordered along a space-filling curve and cut into patches of
``patch_size`` voxels of one scan; attention runs inside each patch with
``torch.nn.functional.scaled_dot_product_attention`` (masked slots pad a scan's last patch), or with
flash-attn's varlen kernel on CUDA when it is installed and enabled. A submanifold conv in front of
every block is the positional encoding (conditional positional encoding, PTv3's xCPE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .serialization import PatchLayout, patch_layout
from .sparse import SubMConv3d
from .structure import SparseTensor

try:  # optional fast path on CUDA
    from flash_attn import flash_attn_varlen_qkvpacked_func as _flash_varlen
except Exception:  # noqa: BLE001
    _flash_varlen = None


def cached_patch_layout(x: SparseTensor, order: str, patch_size: int) -> PatchLayout:
    """Serialization of a level, computed once per (level, order, patch size) and kept in x.cache."""
    key = ("patches", x.stride, order, patch_size)
    layout = x.cache.get(key)
    if layout is None or layout.slot.shape[0] != len(x):
        layout = patch_layout(x.coords, order, x.batch_size, patch_size)
        x.cache[key] = layout
    return layout


class DropPath(nn.Module):
    """Stochastic depth per scan (rows of one scan share the draw), identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, feats: torch.Tensor, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return feats
        keep = torch.rand(batch_size, device=feats.device) >= self.p
        scale = keep.to(feats.dtype) / (1.0 - self.p)
        return feats * scale[batch][:, None]


class PatchAttention(nn.Module):
    """Multi-head self-attention inside serialized patches."""

    def __init__(self, channels: int, num_heads: int, use_flash: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.use_flash = use_flash

    def forward(self, feats: torch.Tensor, layout: PatchLayout, need_significance: bool = False):
        """feats (M, C) -> (M, C), and per-token attention significance (M,) when asked for."""
        m, c = feats.shape
        h = self.num_heads
        p = layout.patch_size
        qkv = self.qkv(feats)
        if (self.use_flash and _flash_varlen is not None and qkv.is_cuda and not need_significance
                and qkv.dtype in (torch.float16, torch.bfloat16)):
            return self._flash(qkv, layout), None
        padded = qkv.new_zeros((layout.num_patches * p, 3 * c))
        padded[layout.slot] = qkv
        q, k, v = padded.view(layout.num_patches, p, 3, h, c // h).permute(2, 0, 3, 1, 4)  # (np, h, p, d)
        key_mask = layout.valid[:, None, None, :]  # (np, 1, 1, p): True = may attend
        significance = None
        if need_significance:
            scores = (q @ k.transpose(-1, -2)) * (c // h) ** -0.5
            attn = scores.masked_fill(~key_mask, float("-inf")).softmax(-1)  # (np, h, p, p)
            out = attn @ v
            # attention received by each key, averaged over heads and over the patch's valid queries
            qvalid = layout.valid.to(attn.dtype)  # (np, p)
            received = (attn.mean(1) * qvalid[:, :, None]).sum(1) / qvalid.sum(1, keepdim=True)
            significance = received.reshape(-1)[layout.slot]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        out = out.permute(0, 2, 1, 3).reshape(layout.num_patches * p, c)[layout.slot]
        return self.proj(out), significance

    def _flash(self, qkv: torch.Tensor, layout: PatchLayout) -> torch.Tensor:
        m, c3 = qkv.shape
        c = c3 // 3
        h = self.num_heads
        order = torch.argsort(layout.slot)  # tokens in patch order; patches are contiguous runs
        lengths = layout.valid.sum(1, dtype=torch.int32)
        cu = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        packed = qkv[order].view(m, 3, h, c // h)
        out = _flash_varlen(packed, cu, int(lengths.max()), 0.0).reshape(m, c)
        result = torch.empty_like(out)
        result[order] = out
        return self.proj(result)


class SerializedAttentionBlock(nn.Module):
    """x + CPE(x); x + attn(LN(x)); x + MLP(LN(x)) -- pre-norm transformer block on one level."""

    def __init__(self, channels: int, num_heads: int, patch_size: int, order: str, mlp_ratio: float = 2.0,
                 drop_path: float = 0.0, backend: str = "auto", cpe_reduction: int = 1) -> None:
        super().__init__()
        self.order = order
        self.patch_size = patch_size
        # cpe_reduction > 1 runs the positional conv on channels / r (a k^3 conv costs C^2 per pair;
        # on CPU the full-width conv would cost more than the attention itself)
        inner = max(1, channels // cpe_reduction)
        self.cpe_in = nn.Linear(channels, inner) if cpe_reduction > 1 else nn.Identity()
        self.cpe = SubMConv3d(inner, inner, 3, bias=True, backend=backend)
        self.cpe_proj = nn.Linear(inner, channels)
        self.cpe_norm = nn.LayerNorm(channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = PatchAttention(channels, num_heads)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: SparseTensor, need_significance: bool = False):
        batch = x.batch if self.drop_path.p > 0 and self.training else None
        pos = self.cpe(x.replace_feats(self.cpe_in(x.feats))).feats
        feats = x.feats + self.cpe_norm(self.cpe_proj(pos))
        layout = cached_patch_layout(x, self.order, self.patch_size)
        attn, significance = self.attn(self.norm1(feats), layout, need_significance)
        feats = feats + self.drop_path(attn, batch, x.batch_size)
        feats = feats + self.drop_path(self.mlp(self.norm2(feats)), batch, x.batch_size)
        return x.replace_feats(feats), significance


__all__ = ["DropPath", "PatchAttention", "SerializedAttentionBlock", "cached_patch_layout"]
