"""jepa: joint-embedding predictive architecture for sparse scenes (I-JEPA / Point-JEPA style).

The context (student) encoder sees only the visible voxels; the EMA target encoder sees the whole
view. A predictor, given the context tokens and the *cell centre* of each masked patch (where the
patch is, not the shape of its points), predicts the target encoder's latent of that patch (mean of
its up-cast coarse features, layer-normalised). Loss: L2 to the stop-gradient target. Collapse is
watched through the feature standard deviation of predictions and targets (both near 0 on collapse).

With few steps the L2 loss is minimised first by predicting the *mean* target (the real-data study saw
prediction spreads 4x below the target spread at step 900), so the context encoder gets little signal
about which patch is which. ``spread_weight`` adds a hinge on each feature dimension's spread over the
batch's predicted patches: it costs nothing while the predictions vary as much as the targets do, and
pushes them apart when they do not (VICReg's variance term, with the targets' own spread as the level).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import hierarchy, schedules
from ..ema import EMATeacher
from ..heads import TokenPredictor
from ..views import ViewGroupConfig
from ..voxels import Views
from .base import MaskFn, MaskingRecipe, StepInfo, encode, level_channels


@dataclass
class JEPAConfig:
    views: dict[str, ViewGroupConfig] = field(default_factory=dict)
    mask_ratio: tuple[float, float] = (0.4, 0.6)  # start -> end of training
    patch_size: float = 1.6  # metres: target regions
    level: int = -1  # encoder level of context tokens and targets (negative: from the coarsest)
    predictor_dim: int = 64
    predictor_depth: int = 2
    predictor_heads: int = 4
    position_scale: float = 10.0  # metres: wavelength scale of the positional embedding
    spread_weight: float = 0.0  # weight of the prediction-spread hinge (0: plain I-JEPA L2 loss)


def feature_std(x: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension standard deviation of L2-normalised features (collapse -> 0)."""
    if x.shape[0] < 2:
        return x.new_zeros(())
    return F.normalize(x.float(), dim=-1).std(dim=0).mean()


def spread_shortfall(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over feature dimensions of how far the predictions' standard deviation (over patches) falls
    short of the targets'; 0 when predictions vary at least as much as the targets."""
    if pred.shape[0] < 2:
        return pred.sum() * 0.0
    pred_std = (pred.float().var(dim=0) + 1e-4).sqrt()
    target_std = (target.float().var(dim=0) + 1e-4).sqrt().detach()
    return F.relu(target_std - pred_std).mean()


class JEPARecipe(MaskingRecipe):
    name = "jepa"
    Config = JEPAConfig
    default_views = {"scene": ViewGroupConfig(count=1, crop="ball", crop_points=16000)}

    def __init__(self, cfg: JEPAConfig, encoder_factory, preprocessing, in_channels: int) -> None:
        super().__init__(cfg, encoder_factory, preprocessing, in_channels)
        channels = level_channels(self.student, in_channels)
        self.level = cfg.level % len(channels)
        dim = hierarchy.upcast_channels(channels, self.level)
        self.target_dim = dim
        self.predictor = TokenPredictor(dim, cfg.predictor_dim, dim, cfg.predictor_depth, cfg.predictor_heads, cfg.position_scale)
        self.teacher = EMATeacher(self.student)

    def masked_losses(self, views: Views, step: StepInfo, mask_fn: MaskFn):
        cfg = self.cfg
        view = views["scene"][0]
        ratio = schedules.ramp(step.step, step.total_steps, *cfg.mask_ratio)
        voxel_mask, patches, patch_masked = mask_fn(view, cfg.patch_size, ratio, step)

        with torch.no_grad():
            full = encode(self.teacher.module, view.sparse())
            # target latent of a patch: mean over its level-0 voxels of their coarse up-cast feature
            per_voxel = full.upcast(self.level)[full.parents[self.level]].float()
            per_patch = hierarchy.scatter_mean(per_voxel, patches.of_voxel, len(patches))
            target_ids = patch_masked.nonzero().squeeze(1)
            target = F.layer_norm(per_patch[target_ids], (per_patch.shape[1],))

        visible = view.select(~voxel_mask)
        ctx = encode(self.student, visible.sparse())
        ctx_pos = ctx.positions(visible.coord)[self.level]
        pred = self.predictor(
            ctx.upcast(self.level), ctx_pos, ctx.batch(self.level),
            patches.cell_center[target_ids], patches.batch[target_ids], view.batch_size,
        )
        # no masked patch (tiny view): a zero loss that keeps every parameter in the graph (DDP)
        prediction = F.mse_loss(pred.float(), target) if target_ids.numel() else pred.sum() * 0.0
        shortfall = spread_shortfall(pred, target)
        losses = {
            "loss": prediction + cfg.spread_weight * shortfall,
            "prediction": prediction.detach(),
            "spread_shortfall": shortfall.detach(),
            "pred_std": feature_std(pred.detach()),
            "target_std": feature_std(target),
            "mask_ratio": voxel_mask.float().mean().detach(),
            "targets": torch.tensor(float(target_ids.numel())),
        }
        return losses, [ctx.global_feature(view.batch_size)]


__all__ = ["JEPAConfig", "JEPARecipe", "feature_std", "spread_shortfall"]
