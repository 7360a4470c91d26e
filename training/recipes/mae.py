"""mae: masked patch reconstruction (Point-MAE style, Chamfer loss) with positional-leakage mitigation.

The student encodes the visible voxels; a predictor reads their coarse tokens plus one query per
masked *region* and outputs ``points_per_query`` points per region, compared by Chamfer distance with
the region's masked voxel positions (relative to the query position, in units of the region size).

The leak: Point-MAE hands the decoder the exact centre of every masked patch; on a surface those
centres already trace the missing shape, so much of the "reconstruction" is given away.
``leak_positions: true`` reproduces that baseline (one query per masked patch at the centroid of its
points). By default the decoder only learns which coarse *block* (``query_block`` patches per axis)
holds masked geometry, at the block's grid-cell centre, and must place the points itself. The
``chamfer_position_only_m`` monitor (every predicted point at the query position) measures how much
the position given to the decoder explains by itself: compare it between the two settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import hierarchy, schedules
from ..heads import TokenPredictor, pad_by_batch
from ..views import ViewGroupConfig
from ..voxels import Views
from .base import MaskFn, MaskingRecipe, StepInfo, encode, level_channels


@dataclass
class MAEConfig:
    views: dict[str, ViewGroupConfig] = field(default_factory=dict)
    mask_ratio: tuple[float, float] = (0.6, 0.6)
    patch_size: float = 0.8  # metres
    leak_positions: bool = False  # true: the leaky baseline (exact masked-patch centroids to the decoder)
    query_block: int = 2  # mitigated: one query per block of query_block^3 patches, at the block cell centre
    points_per_query: int = 32
    target_points: int = 64  # masked voxels sampled per region as the Chamfer target
    level: int = -1
    predictor_dim: int = 64
    predictor_depth: int = 2
    predictor_heads: int = 4
    position_scale: float = 10.0


def chamfer(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Symmetric Chamfer distance (mean Euclidean) per region: pred (Q,K,3), target (Q,P,3), valid (Q,P)."""
    d = torch.cdist(pred.float(), target.float())  # (Q, K, P)
    big = torch.finfo(d.dtype).max / 4
    d = torch.where(valid.unsqueeze(1), d, torch.full_like(d, big))
    pred_to_target = d.min(dim=2).values.mean(dim=1)
    target_to_pred = (d.min(dim=1).values * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    return pred_to_target + target_to_pred


class MAERecipe(MaskingRecipe):
    name = "mae"
    Config = MAEConfig
    default_views = {"scene": ViewGroupConfig(count=1, crop="ball", crop_points=16000)}

    def __init__(self, cfg: MAEConfig, encoder_factory, preprocessing, in_channels: int) -> None:
        super().__init__(cfg, encoder_factory, preprocessing, in_channels)
        channels = level_channels(self.student, in_channels)
        self.level = cfg.level % len(channels)
        dim = hierarchy.upcast_channels(channels, self.level)
        self.predictor = TokenPredictor(dim, cfg.predictor_dim, 3 * cfg.points_per_query, cfg.predictor_depth,
                                        cfg.predictor_heads, cfg.position_scale)

    def regions(self, view, patches, patch_masked, voxel_mask):
        """Masked regions: (region of each masked voxel, region batch, query position, region size)."""
        masked_rows = voxel_mask.nonzero().squeeze(1)
        patch_of = patches.of_voxel[masked_rows]
        if self.cfg.leak_positions:
            ids, region_of = torch.unique(patch_of, return_inverse=True)
            query_pos = hierarchy.scatter_mean(view.coord[masked_rows].float(), region_of, ids.numel())
            return masked_rows, region_of, patches.batch[ids], query_pos, patches.size
        block = torch.div(patches.cell[patch_of], self.cfg.query_block, rounding_mode="floor")
        keys = hierarchy.cell_keys(patches.batch[patch_of], block)
        ids, region_of = torch.unique(keys, return_inverse=True)
        first = torch.full((ids.numel(),), len(keys), dtype=torch.long, device=keys.device)
        first.scatter_reduce_(0, region_of, torch.arange(len(keys), device=keys.device), reduce="amin")
        size = patches.size * self.cfg.query_block
        query_pos = (block[first].float() + 0.5) * size + patches.offset
        return masked_rows, region_of, patches.batch[patch_of][first], query_pos, size

    def masked_losses(self, views: Views, step: StepInfo, mask_fn: MaskFn):
        cfg = self.cfg
        view = views["scene"][0]
        ratio = schedules.ramp(step.step, step.total_steps, *cfg.mask_ratio)
        voxel_mask, patches, patch_masked = mask_fn(view, cfg.patch_size, ratio, step)
        masked_rows, region_of, region_batch, query_pos, size = self.regions(view, patches, patch_masked, voxel_mask)
        q = region_batch.numel()

        # Chamfer targets: up to target_points random masked voxels per region, relative to the query.
        shuffle = torch.randperm(masked_rows.numel(), generator=step.generator).to(masked_rows.device)
        rel = (view.coord[masked_rows].float() - query_pos[region_of]) / size
        target, valid, _ = pad_by_batch(rel[shuffle], region_of[shuffle], q)
        target, valid = target[:, : cfg.target_points], valid[:, : cfg.target_points]

        visible = view.select(~voxel_mask)
        ctx = encode(self.student, visible.sparse())
        ctx_pos = ctx.positions(visible.coord)[self.level]
        pred = self.predictor(ctx.upcast(self.level), ctx_pos, ctx.batch(self.level), query_pos, region_batch, view.batch_size)
        pred = pred.float().view(q, cfg.points_per_query, 3)
        if q == 0:  # nothing masked (tiny view): a zero loss that keeps every parameter in the graph
            loss = pred.sum() * 0.0
            position_only = loss.detach()
        else:
            loss = chamfer(pred, target, valid).mean()
            with torch.no_grad():
                position_only = chamfer(torch.zeros_like(pred[:, :1]), target, valid).mean()
        losses = {
            "loss": loss,
            "chamfer_m": loss.detach() * size,  # metres, comparable between leaky and mitigated runs
            "chamfer_position_only_m": position_only * size,
            "mask_ratio": voxel_mask.float().mean().detach(),
            "regions": torch.tensor(float(q)),
        }
        return losses, [ctx.global_feature(view.batch_size)]


__all__ = ["MAEConfig", "MAERecipe", "chamfer"]
