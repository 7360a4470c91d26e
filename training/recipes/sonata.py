"""sonata: decoder-free point self-distillation (Wu et al., "Sonata", CVPR 2025).

Views: ``global`` (large crops, seen by the EMA teacher), ``local`` (small crops) and masked copies
of the global views (patches replaced by a mask token and jittered harder); the student sees local
and masked views. Voxels are matched across views by their original coordinates at coarse levels,
where features are up-cast (every coarser level concatenated), so no decoder is needed and the
objective cannot be solved from fine geometry alone. The teacher's prototype scores are centred
with Sinkhorn-Knopp; the student matches them by cross-entropy. Masked patches grow and the mask
ratio rises over training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import hierarchy, schedules
from ..ema import EMATeacher
from ..heads import PrototypeHead, sinkhorn_knopp
from ..masking import jitter_masked_coords
from ..views import AugmentConfig, ViewGroupConfig
from ..voxels import VoxelBatch, Views
from .base import MaskFn, MaskingRecipe, StepInfo, encode, level_channels


@dataclass
class SonataConfig:
    views: dict[str, ViewGroupConfig] = field(default_factory=dict)  # empty: SonataRecipe.default_views
    loss_levels: list[int] = field(default_factory=lambda: [-1, -2])  # coarse levels (negative: from the coarsest)
    prototypes: int = 256
    head_hidden: int = 256
    head_bottleneck: int = 64
    student_temperature: float = 0.1
    teacher_temperature: float = 0.05
    sinkhorn_iterations: int = 3
    mask_ratio: tuple[float, float] = (0.3, 0.7)  # start -> end of training
    mask_patch_size: tuple[float, float] = (0.4, 1.6)  # metres, start -> end (patches grow)
    masked_jitter: float = 0.1  # metres: stronger jitter on masked voxels
    match_cell: float = 1.0  # matching cell, in voxels of the loss level
    local_weight: float = 1.0
    masked_weight: float = 1.0


class SonataRecipe(MaskingRecipe):
    name = "sonata"
    Config = SonataConfig
    encodes_visible_only = False  # masked voxels enter the student encoder as its mask token
    default_views = {
        "global": ViewGroupConfig(count=2, crop="ball", crop_points=16000, center_jitter=1.0),
        "local": ViewGroupConfig(count=2, crop="ball", crop_points=4000, center_jitter=4.0,
                                 augment=AugmentConfig(scale=(0.8, 1.2))),
    }
    # temporal pairs: the second global view (a teacher target for every student view) and the second
    # local view come from the partner frame, so half the matched pairs span two frames
    temporal_views = {"global": (1,), "local": (1,)}

    def __init__(self, cfg: SonataConfig, encoder_factory, preprocessing, in_channels: int) -> None:
        super().__init__(cfg, encoder_factory, preprocessing, in_channels)
        channels = level_channels(self.student, in_channels)
        self.levels = sorted({lv % len(channels) for lv in cfg.loss_levels})
        self.heads = nn.ModuleDict({
            str(lv): PrototypeHead(hierarchy.upcast_channels(channels, lv), cfg.head_hidden, cfg.head_bottleneck, cfg.prototypes)
            for lv in self.levels
        })
        self.teacher = EMATeacher(nn.ModuleDict(self.ema_modules()))

    def ema_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.student, "heads": self.heads}

    def student_modules(self) -> nn.Module:
        return nn.ModuleDict(self.ema_modules())

    def teacher_encoder_module(self) -> nn.Module:
        return self.teacher.module["encoder"]

    def _level_outputs(self, encoder, heads, view: VoxelBatch, mask: torch.Tensor | None = None):
        out = encode(encoder, view.sparse(), mask=mask)
        positions = out.positions(view.origin)
        per_level = {}
        for lv in self.levels:
            per_level[lv] = (heads[str(lv)](out.upcast(lv)), positions[lv], out.batch(lv), out.levels[lv].stride)
        return out, per_level

    def masked_losses(self, views: Views, step: StepInfo, mask_fn: MaskFn):
        cfg = self.cfg
        globals_, locals_ = views["global"], views.get("local", [])
        ratio = schedules.ramp(step.step, step.total_steps, *cfg.mask_ratio)
        patch = schedules.ramp(step.step, step.total_steps, *cfg.mask_patch_size)

        with torch.no_grad():
            teacher = self.teacher.module
            targets = []
            for view in globals_:
                _, per_level = self._level_outputs(teacher["encoder"], teacher["heads"], view)
                targets.append({
                    lv: (sinkhorn_knopp(logits, cfg.teacher_temperature, cfg.sinkhorn_iterations), pos, batch)
                    for lv, (logits, pos, batch, _) in per_level.items()
                })

        student_inputs = [("local", view, None) for view in locals_]
        masked_fraction = []
        for view in globals_:
            voxel_mask, _, _ = mask_fn(view, patch, ratio, step)
            coords, kept = jitter_masked_coords(view.coords, voxel_mask, cfg.masked_jitter / self.preprocessing.voxel_size, step.generator)
            masked_view = VoxelBatch(coords[kept], view.coord[kept], view.origin[kept], view.feat[kept], view.batch_size)
            student_inputs.append(("masked", masked_view, voxel_mask[kept]))  # the encoder's mask token
            masked_fraction.append(voxel_mask.float().mean())

        losses = {"local": [], "masked": []}
        matched = []
        masked_globals = []
        for kind, view, mask in student_inputs:
            out, per_level = self._level_outputs(self.student, self.heads, view, mask)
            if kind == "masked":
                masked_globals.append(out.global_feature(view.batch_size))
            for lv, (logits, pos, batch, stride) in per_level.items():
                cell = cfg.match_cell * stride * self.preprocessing.voxel_size
                log_p = F.log_softmax(logits.float() / cfg.student_temperature, dim=-1)
                for q, t_pos, t_batch in (t[lv] for t in targets):
                    s_idx, t_idx = hierarchy.match_positions(pos, batch, t_pos, t_batch, cell)
                    matched.append(torch.tensor(float(s_idx.numel()) / max(len(pos), 1)))
                    if s_idx.numel() == 0:
                        losses[kind].append(log_p.sum() * 0.0)  # keeps every parameter in the graph (DDP)
                        continue
                    losses[kind].append(-(q[t_idx] * log_p[s_idx]).sum(dim=-1).mean())
        local = torch.stack(losses["local"]).mean() if losses["local"] else torch.zeros((), device=globals_[0].device)
        masked = torch.stack(losses["masked"]).mean()
        loss = cfg.local_weight * local + cfg.masked_weight * masked
        result = {
            "loss": loss, "loss_local": local.detach(), "loss_masked": masked.detach(),
            "mask_ratio": torch.stack(masked_fraction).mean().detach(), "matched": torch.stack(matched).mean(),
            "patch_size": torch.tensor(patch),
        }
        return result, masked_globals


__all__ = ["SonataConfig", "SonataRecipe"]
