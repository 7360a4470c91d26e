"""acl: attention-driven dynamic masking plus a contrastive term, on top of another masking recipe.

Instead of masking uniformly, the patches the encoder attends to most are masked: one gradient-free
pass of the (EMA teacher, else student) encoder over the full view returns each voxel's attention
significance (attention it receives, averaged over heads and queries, per attention level, mapped to
level 0); a patch scores its voxels' mean, and ``ratio`` of each scan's patches are sampled without
replacement with probability softmax(score / temperature). The base recipe's loss is computed with
that mask, and after ``contrast_warmup`` steps an InfoNCE term (ramped in over ``contrast_ramp``
steps) aligns the global feature of each masked student view with the global feature of its full
view (other scans of the global batch are the negatives).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssl3d_ros.config import from_dict

from .. import hierarchy, masking, schedules
from ..heads import mlp
from ..views import ViewGroupConfig, ViewMaker
from ..voxels import VoxelBatch, Views
from .base import MaskingRecipe, Recipe, StepInfo, encode, level_channels


@dataclass
class ACLConfig:
    base: Literal["sonata", "msm", "jepa", "mae"] = "mae"
    base_config: dict[str, Any] = field(default_factory=dict)  # the base recipe's own Config fields
    mask_temperature: float = 0.5  # lower: mask the most-attended patches more deterministically
    contrast_weight: float = 0.5
    contrast_warmup: int = 50  # steps of the base loss alone
    contrast_ramp: int = 50  # steps over which the contrastive weight rises to contrast_weight
    contrast_temperature: float = 0.2
    projector_dim: int = 64


def attention_significance(encoded, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Attention each level-0 voxel's coarse voxel receives in the deepest attention stage,
    standardised per scan: raw values are ~1/patch length, so the sampling temperature is in units
    of the scan's standard deviation instead."""
    significance = encoded.raw.attention_at_level0()
    if significance is None:
        raise RuntimeError("the encoder returned no attention significance: acl needs an encoder with attention stages")
    s = significance.float()
    mean = hierarchy.scatter_mean(s, batch, batch_size)
    std = hierarchy.scatter_mean((s - mean[batch]) ** 2, batch, batch_size).sqrt().clamp_min(1e-8)
    return (s - mean[batch]) / std[batch]


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between rows of a and b (positives on the diagonal). Under DDP the other
    ranks' ``b`` join as extra negatives (gathered without gradient)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    offset = 0
    keys = b
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.zeros_like(b) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, b.detach().contiguous())
        gathered[dist.get_rank()] = b
        offset = dist.get_rank() * b.shape[0]
        keys = torch.cat(gathered)
    logits = a @ keys.t() / temperature
    labels = torch.arange(a.shape[0], device=a.device) + offset
    loss_ab = F.cross_entropy(logits, labels)
    loss_ba = F.cross_entropy((b @ a.t()) / temperature, torch.arange(a.shape[0], device=a.device))
    return 0.5 * (loss_ab + loss_ba)


class ACLRecipe(Recipe):
    name = "acl"
    Config = ACLConfig

    @classmethod
    def encoder_overrides(cls, cfg: ACLConfig) -> dict[str, Any]:
        from . import recipe_class

        base = recipe_class(cfg.base)
        return base.encoder_overrides(from_dict(base.Config, cfg.base_config, "recipe.base_config")) if hasattr(base, "encoder_overrides") else {}

    @classmethod
    def validate_config(cls, cfg: ACLConfig) -> None:
        from . import recipe_class

        base = recipe_class(cfg.base)
        base.validate_config(from_dict(base.Config, cfg.base_config, "recipe.base_config"))

    def __init__(self, cfg: ACLConfig, encoder_factory, preprocessing, in_channels: int) -> None:
        nn.Module.__init__(self)  # no encoder of its own: it trains the base recipe's
        from . import recipe_class

        self.cfg = cfg
        self.preprocessing = preprocessing
        self.in_channels = in_channels
        base_cls = recipe_class(cfg.base)
        if not issubclass(base_cls, MaskingRecipe):
            raise ValueError(f"acl needs a masking recipe as base, got {cfg.base!r}")
        self.base = base_cls(from_dict(base_cls.Config, cfg.base_config, "recipe.base_config"), encoder_factory, preprocessing, in_channels)
        channels = level_channels(self.base.student, in_channels)
        self.projector = mlp(channels[-1], 2 * cfg.projector_dim, cfg.projector_dim)
        self.teacher = None
        self._full_globals: list[torch.Tensor] = []

    # the base recipe owns views, encoders and the EMA teacher
    def view_groups(self) -> dict[str, ViewGroupConfig]:
        return self.base.view_groups()

    def view_maker(self) -> ViewMaker:
        return self.base.view_maker()  # with the base's temporal views

    @property
    def student_encoder(self) -> nn.Module:
        return self.base.student_encoder

    @property
    def teacher_encoder(self) -> nn.Module | None:
        return self.base.teacher_encoder

    def on_step_end(self, step: StepInfo) -> None:
        self.base.on_step_end(step)

    def unused_parameters(self) -> list[str]:
        return [f"base.{name}" for name in self.base.unused_parameters()]

    def attention_mask(self, view: VoxelBatch, patch_size: float, ratio: float, step: StepInfo):
        encoder = self.base.teacher_encoder if self.base.teacher_encoder is not None else self.base.student_encoder
        with torch.no_grad():
            full = encode(encoder, view.sparse(), need_attention=True)
            scores = attention_significance(full, view.batch, view.batch_size)
            self._full_globals.append(full.global_feature(view.batch_size))
        return masking.patch_mask(view.coord, view.batch, patch_size, ratio, step.generator, scores=scores,
                                  temperature=self.cfg.mask_temperature)

    def contrast_weight(self, step: int) -> float:
        start = self.cfg.contrast_warmup
        return schedules.linear(step, start, start + self.cfg.contrast_ramp, 0.0, self.cfg.contrast_weight)

    def forward(self, views: Views, step: StepInfo) -> dict[str, torch.Tensor]:
        self._full_globals = []
        losses, masked_globals = self.base.masked_losses(views, step, self.attention_mask)
        full_globals, self._full_globals = self._full_globals, []
        contrast = torch.stack([
            info_nce(self.projector(m), self.projector(f), self.cfg.contrast_temperature)
            for m, f in zip(masked_globals, full_globals)
        ]).mean()
        weight = self.contrast_weight(step.step)
        # always in the graph (weight 0 during warm-up) so every parameter gets a gradient under DDP
        out = {f"base_{k}": v.detach() for k, v in losses.items()}
        out["loss"] = losses["loss"] + weight * contrast
        out["loss_contrast"] = contrast.detach()
        out["contrast_weight"] = torch.tensor(weight)
        return out


__all__ = ["ACLConfig", "ACLRecipe", "attention_significance", "info_nce"]
