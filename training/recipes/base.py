"""The one interface every self-supervised objective implements, and the pieces they share.

A recipe is an ``nn.Module`` holding the student encoder, its heads and (when it distils) an EMA
teacher. The loop only ever calls:

    views = batch of named view groups (built in DataLoader workers from ``recipe.view_groups()``)
    losses = recipe(views, step)          # {"loss": scalar to minimise, other keys: monitors}
    recipe.on_step_end(step)              # EMA update
    recipe.export_encoder()               # what the node runs

Masking recipes additionally implement ``masked_losses(views, step, mask_fn)`` returning their
losses and a pooled global feature of the masked student view, so ``acl`` can choose the mask
(attention-driven) and add its contrastive term to any of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from ssl3d_ros.config import ConfigError
from ssl3d_ros.models.structure import SparseTensor
from ssl3d_ros.preprocessing import PreprocessConfig
from ssl3d_ros.scan import Scan

from .. import hierarchy, masking
from ..views import ViewGroupConfig, ViewMaker
from ..voxels import VoxelBatch, Views

EncoderFactory = Callable[[], nn.Module]


@dataclass
class StepInfo:
    step: int
    total_steps: int
    ema_momentum: float
    generator: torch.Generator  # CPU generator seeded from (seed, step, rank): masks are reproducible on resume

    @property
    def progress(self) -> float:
        return min(self.step / max(self.total_steps, 1), 1.0)


class MaskFn(Protocol):
    def __call__(self, view: VoxelBatch, patch_size: float, ratio: float, step: StepInfo) -> tuple[torch.Tensor, masking.Patches, torch.Tensor]:
        """(voxel mask, patches, patch mask) for ``view``."""
        ...


def random_mask(view: VoxelBatch, patch_size: float, ratio: float, step: StepInfo):
    """Uniformly chosen patches (the default for every masking recipe)."""
    return masking.patch_mask(view.coord, view.batch, patch_size, ratio, step.generator)


@dataclass
class Encoded:
    """An encoder pass with its hierarchy made explicit (parents for every level, identity at level 0)."""

    levels: list[SparseTensor]
    parents: list[torch.Tensor]
    attention: Any
    raw: Any

    @property
    def sizes(self) -> list[int]:
        return [len(level) for level in self.levels]

    def positions(self, level0_pos: torch.Tensor) -> list[torch.Tensor]:
        return hierarchy.level_positions(level0_pos.float(), self.parents, self.sizes)

    def upcast(self, level: int) -> torch.Tensor:
        return hierarchy.upcast(self.levels, self.parents, level)

    def batch(self, level: int) -> torch.Tensor:
        return self.levels[level].batch

    def global_feature(self, batch_size: int) -> torch.Tensor:
        last = self.levels[-1]
        return hierarchy.pool_per_scan(last.feats.float(), last.batch, batch_size)


def encode(encoder: nn.Module, x: SparseTensor, mask: torch.Tensor | None = None, need_attention: bool = False) -> Encoded:
    """Encoder pass; ``mask`` (M,) bool replaces those voxels' inputs by the encoder's mask token."""
    out = encoder(x, mask=mask, need_attention=need_attention)
    levels = list(out.levels)
    parents = hierarchy.level_parents(levels, getattr(out, "parents", None))
    return Encoded(levels, parents, getattr(out, "attention", None), out)


def level_channels(encoder: nn.Module, in_channels: int) -> list[int]:
    """Channels of each encoder level, read from a forward pass on a tiny dummy scan."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3).int()
    coords = torch.cat([torch.zeros(len(grid), 1, dtype=torch.int32), grid], 1)
    device = next(encoder.parameters()).device
    x = SparseTensor(torch.zeros(len(grid), in_channels, device=device), coords.to(device), 1)
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = encoder(x)
    encoder.train(was_training)
    return [level.feats.shape[1] for level in out.levels]


class Recipe(nn.Module):
    """Base class: subclasses set ``name`` and ``Config`` and implement ``forward``."""

    name: str = ""
    Config: type = object
    default_views: dict[str, ViewGroupConfig] = {}
    #: views (group -> indices) cut from the partner frame when ``data.temporal`` gives a sample one:
    #: the recipe's cross-view pairs (they are matched by ``origin``, the aligned coordinates)
    temporal_views: dict[str, tuple[int, ...]] = {}

    def __init__(self, cfg: Any, encoder_factory: EncoderFactory, preprocessing: PreprocessConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocessing = preprocessing
        self.in_channels = in_channels
        self.student = encoder_factory()
        self.teacher = None  # an EMATeacher for distilling recipes

    # -- views ---------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        """Checks beyond field types, run when the config is loaded (ConfigError)."""
        given = getattr(cfg, "views", None) or {}
        unknown = sorted(set(given) - set(cls.default_views))
        if unknown:
            raise ConfigError(f"recipe.views: unknown view group(s) {unknown} for {cls.name}; allowed: {sorted(cls.default_views)}")

    def view_groups(self) -> dict[str, ViewGroupConfig]:
        """The recipe's view groups; a group named in ``recipe.views`` replaces that default group."""
        self.validate_config(self.cfg)
        given = getattr(self.cfg, "views", None) or {}
        return {name: given.get(name, default) for name, default in self.default_views.items()}

    def view_maker(self) -> ViewMaker:
        return ViewMaker(self.view_groups(), self.preprocessing, self.temporal_views)

    def make_views(self, scans: list[Scan], generator: np.random.Generator) -> Views:
        """Views of a list of scans in this process (the loop builds them in DataLoader workers instead)."""
        maker = self.view_maker()
        per_scan = [maker(scan, generator) for scan in scans]
        return {name: [VoxelBatch.collate([s[name][i] for s in per_scan]) for i in range(len(per_scan[0][name]))] for name in per_scan[0]}

    # -- training ------------------------------------------------------------------------------
    def forward(self, views: Views, step: StepInfo) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_step_end(self, step: StepInfo) -> None:
        if self.teacher is not None:
            self.teacher.update(self.student_modules(), step.ema_momentum)

    def unused_parameters(self) -> list[str]:
        """Names (as in ``named_parameters``) of trainable parameters this recipe's forward never uses.
        DDP is told to ignore them, so that it can run without ``find_unused_parameters`` (an extra
        autograd traversal every step); the loop checks every step that they really got no gradient."""
        return []

    def student_modules(self) -> nn.Module:
        """What the EMA teacher mirrors (the encoder, plus heads for DINO-style recipes)."""
        return self.student

    def teacher_encoder_module(self) -> nn.Module | None:
        return None if self.teacher is None else self.teacher.module

    @property
    def student_encoder(self) -> nn.Module:
        return self.student

    @property
    def teacher_encoder(self) -> nn.Module | None:
        return self.teacher_encoder_module()

    def export_encoder(self, which: str = "teacher") -> nn.Module:
        """The encoder written to ``encoder.safetensors``: the EMA teacher when there is one and
        ``which == "teacher"`` (its weights are the smoother average, as in DINO/Sonata), else the student."""
        if which == "teacher" and self.teacher_encoder is not None:
            return self.teacher_encoder
        return self.student_encoder


class MaskingRecipe(Recipe):
    """A recipe whose mask ``acl`` may choose: ``masked_losses`` takes the mask function."""

    #: True when the student encodes only the visible voxels (msm, jepa, mae), so the encoder's input
    #: mask token never enters the graph; sonata instead replaces masked voxels' features with it.
    encodes_visible_only: bool = True

    def unused_parameters(self) -> list[str]:
        return ["student.mask_token"] if self.encodes_visible_only else []

    def masked_losses(self, views: Views, step: StepInfo, mask_fn: MaskFn) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(losses, pooled global feature of the masked student view (B, C))."""
        raise NotImplementedError

    def mask_view(self, views: Views) -> VoxelBatch:
        """The view whose mask ``mask_fn`` decides (attention-driven masking looks at it)."""
        raise NotImplementedError

    def forward(self, views: Views, step: StepInfo) -> dict[str, torch.Tensor]:
        return self.masked_losses(views, step, random_mask)[0]


__all__ = ["StepInfo", "MaskFn", "random_mask", "Encoded", "encode", "level_channels", "Recipe", "MaskingRecipe", "EncoderFactory"]
