"""The pretraining loop: one recipe, AdamW + warm-up/cosine, EMA schedule, clipping, bf16 on CUDA,
DDP, resumable checkpoints, metrics, clean stops - on the training runtime (``runtime.run``), which
fine-tuning shares; this module adds the recipe, its data and the exported encoder.

Determinism: every random draw of step s (augmentations, masks, dropout) comes from generators seeded
with (seed, step, rank) or (seed, sample position), so a resumed run continues exactly as an
uninterrupted one (on the same hardware and worker count-independent).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl3d_ros.models.encoder import build_encoder
from ssl3d_ros.preprocessing import feature_channels

from .config import PretrainConfig, encoder_config
from .data import SAMPLE_COUNTERS, Batch, PretrainDataset, open_data
from .ema import momentum_at
from .recipes import Recipe, StepInfo, recipe_class
from . import distributed
from .runtime.run import OptimisationStep, StepReport, adamw, param_groups, restore_latest, run_steps, start_run
from .runtime.run import model_config_changes as changes_in
from .voxels import views_to

log = logging.getLogger(__name__)


def build_encoder_factory(cfg: PretrainConfig, in_channels: int, overrides: dict[str, Any] | None = None):
    """Encoder constructor: the ``encoder`` section (size preset + overrides), input channels from the
    preprocessing features, plus what the recipe needs (msm: the decoder)."""
    return functools.partial(build_encoder, encoder_config(cfg.encoder, in_channels, overrides))


def build_recipe(cfg: PretrainConfig) -> Recipe:
    in_channels = feature_channels(cfg.preprocessing)
    cls = recipe_class(cfg.recipe_name)
    overrides = cls.encoder_overrides(cfg.recipe) if hasattr(cls, "encoder_overrides") else {}
    return cls(cfg.recipe, build_encoder_factory(cfg, in_channels, overrides), cfg.preprocessing, in_channels)


@dataclass
class TrainResult:
    step: int  # steps completed
    completed: bool  # reached run.steps
    interrupted_by: int = 0  # signal number, 0 if none
    out_dir: Path = Path(".")
    encoder_path: Path | None = None
    scans_skipped: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    recipe: Recipe | None = None


def inference_encoder(encoder: nn.Module) -> nn.Module:
    """The encoder as the node runs it: a pretraining decoder (msm) is dropped, the rest copied."""
    if not getattr(encoder.cfg, "use_decoder", False):
        return encoder
    plain = build_encoder(dataclasses.replace(encoder.cfg, use_decoder=False)).to(next(encoder.parameters()).device)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith(("decoder.", "decoder_mask_tokens."))}
    plain.load_state_dict(state, strict=True)
    return plain


def export_encoder(path: Path, recipe: Recipe, cfg: PretrainConfig, step: int, counters: dict[str, Any],
                   device: torch.device | str = "cpu") -> Path:
    """The node-loadable checkpoint (ssl3d_ros.checkpoint format) of the pretrained encoder, with a
    novelty reference fitted on ``run.novelty_scans`` of its data (evenly spaced) when that is > 0."""
    from ssl3d_ros.checkpoint import save_checkpoint

    encoder = inference_encoder(recipe.export_encoder(cfg.run.export))
    save_checkpoint(
        path,
        encoder,
        preprocessing=cfg.preprocessing,
        recipe={"name": cfg.recipe_name, "config": {**cfg.to_dict(), "steps_done": step, "exported": cfg.run.export}},
        training_data={"sources": list(cfg.data.sources), "topics": list(cfg.data.topics),
                       "scans_seen": counters.get("scans_seen", 0), "scans_skipped": counters.get("scans_skipped", 0)},
    )
    if cfg.run.novelty_scans > 0:
        from ssl3d_ros.models.novelty import NoveltyFitError

        from .novelty import add_novelty_reference, reference_scans

        try:  # a run's end must not be lost to data too alike to calibrate a reference
            add_novelty_reference(path, path, reference_scans(open_data(cfg.data), cfg.run.novelty_scans),
                                  device=str(device), sources=cfg.data.sources)
        except NoveltyFitError as exc:
            log.warning("%s has no novelty reference: %s", path, exc)
    return path


#: config sections that shape the weights: a resumed run must keep them (data, optim and run may change)
MODEL_SECTIONS = ("preprocessing", "encoder", "recipe")


def model_config_changes(saved: dict[str, Any], cfg: PretrainConfig,
                         sections: tuple[str, ...] = MODEL_SECTIONS) -> list[str]:
    """The runtime's :func:`~.runtime.run.model_config_changes`, pretraining's model sections by default."""
    return changes_in(saved, cfg, sections)


def pretrain_optimizer(cfg: PretrainConfig, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over the recipe's parameters, weight decay on matrices and kernels only."""
    return adamw(param_groups(recipe, cfg.optim.weight_decay), cfg.optim)


class PretrainStep:
    """One ``ssl3d-pretrain`` step of ``recipe`` on a batch (what benchmarks/bench_training.py times):
    the runtime's :class:`OptimisationStep` (lr scaled by the global batch when ``optim.lr_batch`` > 0)
    of the recipe's losses, its EMA momentum of the step and its generator seeded from (seed, step,
    rank), then the recipe's end of step (EMA teacher update). ``model``: the recipe under DDP."""

    def __init__(self, cfg: PretrainConfig, recipe: Recipe, optimizer: torch.optim.Optimizer, device: torch.device,
                 model: nn.Module | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.recipe, self.device = cfg, recipe, device
        global_batch = cfg.run.batch_size * world_size
        base_lr = cfg.optim.lr * (global_batch / cfg.optim.lr_batch if cfg.optim.lr_batch > 0 else 1.0)
        self.ignored = [p for n, p in recipe.named_parameters() if n in set(recipe.unused_parameters())]
        self.optimisation = OptimisationStep(recipe, optimizer, cfg.optim, cfg.run, device, base_lr=base_lr, rank=rank,
                                             wrapped=model, check_gradients=self.check_unused)

    def check_unused(self) -> None:
        if any(p.grad is not None for p in self.ignored):
            raise RuntimeError(f"{self.cfg.recipe_name}: a parameter of unused_parameters() "
                               f"{self.recipe.unused_parameters()} got a gradient; DDP would leave it unsynchronised "
                               "between ranks")

    def __call__(self, step: int, batch: Batch) -> StepReport:
        optim, steps = self.cfg.optim, self.cfg.run.steps
        info = StepInfo(step, steps, momentum_at(step, steps, optim.ema_momentum, optim.ema_momentum_end),
                        torch.Generator().manual_seed(self.optimisation.seed_at(step)))
        views = views_to(batch.views, self.device)
        report = self.optimisation(step, lambda model: model(views, info))
        self.recipe.on_step_end(info)
        report.logged["ema_momentum"] = info.ema_momentum
        report.counted = {key: batch.counts.get(key, 0) for key in SAMPLE_COUNTERS}  # the same keys on every rank
        report.skipped, report.scans = batch.skipped, batch.num_scans
        return report


def train(cfg: PretrainConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Run (or, with ``resume``, continue) pretraining up to ``cfg.run.steps``.

    ``stop_at``: stop after that step as if interrupted (state saved; schedules still span
    ``run.steps``), for time-boxed sessions and tests of resumption.
    """
    run = start_run(cfg.run, resume)
    source = open_data(cfg.data)  # before the model is built: a bad --data fails at once
    recipe = build_recipe(cfg).to(run.device)
    optimizer = pretrain_optimizer(cfg, recipe)
    counters: dict[str, Any] = {"scans_seen": 0, "scans_skipped": 0, **dict.fromkeys(SAMPLE_COUNTERS, 0)}
    start_step = 0
    if resume:
        start_step, _ = restore_latest(run, cfg, recipe, optimizer, counters, MODEL_SECTIONS)
    model = run.wrap(recipe, ignore=recipe.unused_parameters())

    dataset = PretrainDataset(source, recipe.view_maker(), cfg.data, cfg.run.seed,
                              cache_dir=str(run.out_dir / "registration"))
    sampler = run.sampler(start_step)
    # Data that cannot be trained on at all fails here, before training starts, with its own error
    # (UnusableDataError): raised in a DataLoader worker it would come back wrapped in the worker's traceback.
    if start_step < cfg.run.steps:
        dataset[sampler.positions(start_step)[0]]
    end = run_steps(run, run.loader(dataset, sampler), start_step,
                    PretrainStep(cfg, recipe, optimizer, run.device, model, run.dist.rank, run.dist.world_size),
                    model=recipe, optimizer=optimizer, cfg=cfg, counters=counters, desc=f"pretrain {cfg.recipe_name}",
                    progress=progress, stop_at=stop_at)

    encoder_path = None
    completed = end.step >= cfg.run.steps
    if completed and run.is_main:
        encoder_path = export_encoder(run.out_dir / "encoder.safetensors", recipe, cfg, end.step, counters, run.device)
    distributed.barrier()
    return TrainResult(end.step, completed, end.interrupted_by, run.out_dir, encoder_path, counters["scans_skipped"],
                       end.last, recipe)


__all__ = ["train", "build_recipe", "build_encoder_factory", "export_encoder", "pretrain_optimizer", "PretrainStep",
           "TrainResult", "MODEL_SECTIONS", "model_config_changes"]
