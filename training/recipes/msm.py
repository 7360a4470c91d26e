"""msm: masked scene modeling (Hermosilla et al., CVPR 2025), bottom-up hierarchical reconstruction.

The student encodes only the visible voxels of view A (masked patches are removed, not replaced);
its decoder is given A's *full* voxel hierarchy and fills the missing voxels with a learnable
token per level, so masked content is reintroduced bottom-up as the decoder climbs to finer
levels. At every decoder level a linear head predicts the EMA teacher's deep features of the full
scene, where the teacher sees a *different* augmented view B (cross-view targets, matched by
original coordinates), so the targets are invariant to the view's augmentations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl3d_ros.models.sparse import downsample_coords

from .. import hierarchy, schedules
from ..ema import EMATeacher
from ..views import ViewGroupConfig
from ..voxels import Views
from .base import MaskFn, MaskingRecipe, StepInfo, encode


@dataclass
class MSMConfig:
    views: dict[str, ViewGroupConfig] = field(default_factory=dict)  # student (A) and teacher (B)
    mask_ratio: tuple[float, float] = (0.4, 0.6)
    patch_size: float = 0.8  # metres
    masked_only: bool = True  # loss on reconstructed (masked) voxels only; false: on every voxel
    match_cell: float = 1.0  # cross-view matching cell, in voxels of each level


def full_hierarchy(coords: torch.Tensor, num_levels: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Coordinates of every level of a scene's voxel hierarchy and level-0 -> level-k parents."""
    levels, parents = [coords], [torch.arange(coords.shape[0], device=coords.device)]
    for _ in range(num_levels - 1):
        coarse, parent = downsample_coords(levels[-1], 2)
        levels.append(coarse)
        parents.append(parent[parents[-1]])
    return levels, parents


class MSMRecipe(MaskingRecipe):
    name = "msm"
    Config = MSMConfig
    default_views = {
        "student": ViewGroupConfig(count=1, crop="ball", crop_points=16000, center_jitter=1.0),
        "teacher": ViewGroupConfig(count=1, crop="ball", crop_points=16000, center_jitter=1.0),
    }
    temporal_views = {"teacher": (0,)}  # temporal pairs: the teacher's targets come from the partner frame

    @classmethod
    def encoder_overrides(cls, cfg: MSMConfig) -> dict[str, Any]:
        return {"use_decoder": True}

    def __init__(self, cfg: MSMConfig, encoder_factory, preprocessing, in_channels: int) -> None:
        super().__init__(cfg, encoder_factory, preprocessing, in_channels)
        channels = list(self.student.decoder_channels)  # coarse -> fine, same for teacher and student
        self.predictors = nn.ModuleList(nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.Linear(c, c)) for c in channels)
        self.teacher = EMATeacher(self.student)

    def masked_losses(self, views: Views, step: StepInfo, mask_fn: MaskFn):
        cfg = self.cfg
        view_a, view_b = views["student"][0], views["teacher"][0]
        ratio = schedules.ramp(step.step, step.total_steps, *cfg.mask_ratio)
        voxel_mask, _, _ = mask_fn(view_a, cfg.patch_size, ratio, step)

        with torch.no_grad():
            teacher_out = encode(self.teacher.module, view_b.sparse())
            t_pos = teacher_out.positions(view_b.origin)
            n = len(teacher_out.levels)
            # decoder_levels are coarse -> fine: decoder output j lives on level n - 1 - j
            t_targets = [(F.layer_norm(d.feats.float(), (d.feats.shape[1],)), t_pos[n - 1 - j], teacher_out.batch(n - 1 - j))
                         for j, d in enumerate(teacher_out.raw.decoder_levels)]

        visible = view_a.select(~voxel_mask)
        student_out = encode(self.student, visible.sparse())
        full_coords, full_parents = full_hierarchy(view_a.coords, n)
        decoded = self.student.decode(student_out.raw, targets=full_coords, mask_token=True)
        full_pos = hierarchy.level_positions(view_a.origin.float(), full_parents, [len(c) for c in full_coords])

        per_level, recon = [], []
        for j, (d, (target, pos_b, batch_b)) in enumerate(zip(decoded, t_targets)):
            level = n - 1 - j
            coords = full_coords[level]
            # voxels of this level that the visible input does not reach: the reconstructed ones
            present, _ = hierarchy.lookup(hierarchy.cell_keys(coords[:, 0], coords[:, 1:]),
                                          hierarchy.cell_keys(student_out.levels[level].coords[:, 0], student_out.levels[level].coords[:, 1:]))
            cell = cfg.match_cell * (2 ** level) * self.preprocessing.voxel_size
            s_idx, t_idx = hierarchy.match_positions(full_pos[level], coords[:, 0].long(), pos_b, batch_b, cell)
            if cfg.masked_only:
                keep = ~present[s_idx]
                s_idx, t_idx = s_idx[keep], t_idx[keep]
            pred = self.predictors[j](d.feats)
            if s_idx.numel() == 0:
                per_level.append(pred.sum() * 0.0)
                continue
            cos = F.cosine_similarity(pred[s_idx].float(), target[t_idx], dim=-1)
            per_level.append((1.0 - cos).mean())
            recon.append(float(s_idx.numel()))
        losses = torch.stack(per_level)
        result = {"loss": losses.mean(), "mask_ratio": voxel_mask.float().mean().detach(),
                  "targets": torch.tensor(sum(recon))}
        for j, value in enumerate(losses.detach()):
            result[f"loss_level{n - 1 - j}"] = value
        return result, [student_out.global_feature(view_a.batch_size)]


__all__ = ["MSMConfig", "MSMRecipe", "full_hierarchy"]
