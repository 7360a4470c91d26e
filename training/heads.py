"""Training-only heads shared by the recipes: MLP projector, prototype head, Sinkhorn-Knopp, token predictor."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU()]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


class PrototypeHead(nn.Module):
    """DINO-style head: MLP -> L2-normalised bottleneck -> cosine logits against learned prototypes."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden, bottleneck, layers=3)
        self.prototypes = nn.Parameter(torch.empty(prototypes, bottleneck))
        nn.init.normal_(self.prototypes, std=1.0 / math.sqrt(bottleneck))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x.float()), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).t()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignments (rows sum to 1) of N samples to K prototypes.

    Alternately normalising prototype and sample marginals centres the teacher's targets, which
    prevents the collapse onto one prototype (SwAV / DINOv2 / Sonata). Sums are all-reduced across
    DDP ranks so that every rank balances the same global batch.
    """
    distributed = dist.is_available() and dist.is_initialized()
    peak = logits.detach().float().max() if logits.numel() else logits.new_zeros((), dtype=torch.float32)
    if distributed:  # one shift for every rank, so that the shared normalisation stays exact
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    q = torch.exp((logits.float() - peak) / temperature).t()  # (K, N)
    n = torch.tensor([q.shape[1]], dtype=q.dtype, device=q.device)
    if distributed:
        dist.all_reduce(n)
    k = q.shape[0]
    total = q.sum()
    if distributed:
        dist.all_reduce(total)
    q /= total.clamp_min(1e-12)
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(rows)
        q /= rows.clamp_min(1e-12) * k
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-12) * n
    q *= n
    return q.t()


def pad_by_batch(x: torch.Tensor, batch: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows grouped per scan into (B, T, C) with a validity mask (B, T); also each row's slot."""
    counts = torch.bincount(batch, minlength=batch_size)
    order = torch.argsort(batch, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(batch)
    slot[order] = torch.arange(batch.numel(), device=batch.device) - starts[batch[order]]
    t = int(counts.max()) if counts.numel() else 0
    padded = x.new_zeros(batch_size, max(t, 1), x.shape[1])
    valid = torch.zeros(batch_size, max(t, 1), dtype=torch.bool, device=x.device)
    padded[batch, slot] = x
    valid[batch, slot] = True
    return padded, valid, slot


class FourierPosition(nn.Module):
    """Random-Fourier embedding of metric positions (queries and context tokens share it)."""

    def __init__(self, dim: int, scale: float = 1.0, frequencies: int = 16) -> None:
        super().__init__()
        self.register_buffer("freq", torch.randn(3, frequencies) * (2 * math.pi / scale))
        self.proj = nn.Linear(2 * frequencies, dim)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        # fp32 even under bf16 autocast: angles of tens of radians would lose ~0.1 rad in bf16
        with torch.autocast(device_type=pos.device.type, enabled=False):
            angles = pos.float() @ self.freq.float()
            features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.proj(features)


class TokenPredictor(nn.Module):
    """A small transformer over one scan's context tokens plus query tokens placed at given positions.

    Used by jepa (predict each masked region's target latent) and mae (predict each masked region's
    points). Queries are a learned token plus the positional embedding of what the recipe allows the
    predictor to know about the region's position.
    """

    def __init__(self, context_dim: int, dim: int, out_dim: int, depth: int, heads: int, position_scale: float) -> None:
        super().__init__()
        self.context_in = nn.Linear(context_dim, dim)
        self.query_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.query_token, std=0.02)
        self.position = FourierPosition(dim, position_scale)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(
        self,
        context: torch.Tensor, context_pos: torch.Tensor, context_batch: torch.Tensor,
        query_pos: torch.Tensor, query_batch: torch.Tensor, batch_size: int,
    ) -> torch.Tensor:
        ctx = self.context_in(context.float()) + self.position(context_pos)
        qry = self.query_token + self.position(query_pos)
        ctx_pad, ctx_valid, _ = pad_by_batch(ctx, context_batch, batch_size)
        qry_pad, qry_valid, q_slot = pad_by_batch(qry, query_batch, batch_size)
        tokens = torch.cat([ctx_pad, qry_pad], dim=1)
        valid = torch.cat([ctx_valid, qry_valid], dim=1)
        hidden = self.blocks(tokens, src_key_padding_mask=~valid)
        hidden = self.norm(hidden[:, ctx_pad.shape[1]:])
        return self.out(hidden[query_batch, q_slot])


__all__ = ["mlp", "PrototypeHead", "sinkhorn_knopp", "pad_by_batch", "FourierPosition", "TokenPredictor"]
