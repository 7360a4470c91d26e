"""The fine-tuning loop, on the training runtime pretraining shares (``runtime.run``): DDP under
torchrun, bf16 autocast on CUDA, the deterministic resumable sample order, atomic training states
(SIGKILL loses at most one ``checkpoint_every`` interval), StopRequest (Ctrl-C / SIGTERM: finish the
step, save, exit), metrics.csv, TensorBoard and a progress bar.

Schedule: warm-up then cosine for every group, each scaled by its layer-wise ``lr_scale``; during
``freeze_encoder_steps`` the encoder gets no gradient (the head learns on fixed features first).
Validation on held-out scans every ``validation.every`` steps (and at the end) keeps the best
checkpoint in OUT/best.safetensors; OUT/model.safetensors is the best one with ``validation.keep:
best`` (chosen on the validation scans), the last weights with ``keep: last`` or without validation.
OUT/validation.json holds the kept model's validation (per-class IoU and support included) and the rule.
With ``novelty_scans`` > 0, OUT/model.safetensors also holds a novelty reference of its own encoder,
fitted on that many training scans (the node scores how unlike them each frame is).
"""
from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl3d_ros.atomic import atomic_write, atomic_write_json
from ssl3d_ros.config import ConfigError

from .. import distributed
from ..runtime.run import (OptimisationStep, Run, StepReport, adamw, record_skipped, restore_latest, run_steps,
                           start_run)
from .config import MODEL_KEYS, FinetuneConfig
from .data import LabelledBatch, LabelledDataset, LabelledViewMaker, collate_labelled
from .evaluate import score_scans, voxel_hypercolumns
from .labels import ScanList
from .model import SegmentationModel, class_weights, layerwise_groups, segmentation_loss
from .prepare import FinetuneData, InitialEncoder, check_head_classes, check_input, initial_encoder, prepare_data

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
LABELS_FILE = "labels.json"
EVALUATION_FILE = "evaluation.json"
VALIDATION_FILE = "validation.json"


@dataclass
class FinetuneResult:
    step: int
    completed: bool
    interrupted_by: int = 0
    out_dir: Path = Path(".")
    model_path: Path | None = None
    best: dict[str, Any] = field(default_factory=dict)  # {"miou", "accuracy", "step", "iou" per class} of the best validation
    kept: dict[str, Any] = field(default_factory=dict)  # OUT/validation.json: the validation of model.safetensors
    scans_skipped: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)


def export(path: Path, model: SegmentationModel, cfg: FinetuneConfig, data: FinetuneData, preprocessing,
           provenance: dict[str, Any], step: int, counters: dict[str, Any], best: dict[str, Any]) -> Path:
    """The node-ready checkpoint: encoder + head + class names/colours + preprocessing."""
    from ssl3d_ros.checkpoint import ClassInfo, save_checkpoint

    cm = data.class_map
    return save_checkpoint(
        path, model.encoder, preprocessing=preprocessing, seg_head=model.head,
        classes=ClassInfo(names=list(cm.class_names), colors=[tuple(int(v) for v in c) for c in cm.colors]),
        recipe={"name": "finetune", "config": {**cfg.to_dict(), **provenance, "steps_done": step,
                                               "class_map": cm.name, "validation": {"rule": data.validation_rule, **best}}},
        training_data={"sources": list(cfg.data.sources), "labels": data.selection.record,
                       "scans_seen": counters.get("scans_seen", 0), "scans_skipped": counters.get("scans_skipped", 0)},
    )


PCA_SCANS = 16  # training scans whose voxel hypercolumns fit the output's PCA basis


def add_pca_basis(model_path: Path, scans: list, dims: int, device: torch.device) -> None:
    """Store a ``dims``-component PCA basis of the output model's own hypercolumns (the weights it
    ships, the best validation ones when validating) in ``model_path``, as ssl3d-probe --pca-dims does
    for a probe head: the node's auto embedding size uses it."""
    from ssl3d_ros.checkpoint import add_heads, load_checkpoint
    from ssl3d_ros.models.heads import PCAProjection

    ckpt = load_checkpoint(model_path, backend="auto" if device.type == "cuda" else "torch")
    features = voxel_hypercolumns(ckpt.encoder.to(device), scans[:PCA_SCANS], ckpt.preprocessing, device)
    add_heads(model_path, model_path, pca=PCAProjection.fit(features, dims, generator=torch.Generator().manual_seed(0)))


def add_novelty(model_path: Path, scans: list, count: int, device: torch.device, sources: list[str]) -> None:
    """Store a novelty reference of the output model's own encoder, fitted on ``count`` of the training
    ``scans`` (evenly spaced), in ``model_path``; a warning instead when they cannot calibrate one."""
    from ssl3d_ros.models.novelty import NoveltyFitError

    from ..novelty import add_novelty_reference, evenly_spaced

    try:
        add_novelty_reference(model_path, model_path, [scans[i] for i in evenly_spaced(len(scans), count)],
                              device=str(device), sources=sources)
    except NoveltyFitError as exc:
        log.warning("%s has no novelty reference: %s", model_path, exc)


def initial_model(init: InitialEncoder, data: FinetuneData, cfg: FinetuneConfig) -> SegmentationModel:
    """Encoder + head; with init_head the head starts as init's (checked against the class map)."""
    check_head_classes(init, data.class_map, cfg.init)
    model = SegmentationModel(init.encoder, data.class_map.num_classes)
    if init.head is not None:
        model.head.load_state_dict(init.head.state_dict())
    return model


def evaluate(cfg: FinetuneConfig) -> dict[str, Any]:
    """Score init's own encoder + head on the validation scans, without training (``--evaluate``):
    the same scoring as the validation of a fine-tuning run, so a packaged model and a fine-tuned
    one compare like for like. Writes OUT/evaluation.json."""
    if not cfg.init_head:
        raise ConfigError("evaluation scores init's segmentation head: set init_head (--evaluate does)")
    device = Run.start(cfg.run).device
    init = initial_encoder(cfg, device)
    data = prepare_data(cfg)
    if not data.validation:
        raise ConfigError("nothing to evaluate on: give --val-data, --val-holdout or validation.split: block")
    check_input(init.preprocessing, data.validation, cfg.init)
    model = initial_model(init, data, cfg).to(device)
    scores = score_scans(model, data.validation, init.preprocessing, data.class_map.num_classes, device)
    report = {"checkpoint": str(cfg.init), "validation": data.validation_rule, "scans": len(data.validation),
              **scores.to_dict(list(data.class_map.class_names))}
    out_dir = Path(cfg.run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / EVALUATION_FILE, report)
    return report


def validation_record(scores, at_step: int, class_names: list[str]) -> dict[str, Any]:
    """One validation as OUT/validation.json and the training state keep it: step, mIoU, accuracy and
    per class IoU and support."""
    full = scores.to_dict(class_names)
    return {"step": at_step, "miou": scores.miou, "accuracy": scores.accuracy, "iou": full["iou"],
            "support": full["support"]}


KEEP_RULES = {"best": "the step of the best validation mIoU, chosen on the validation scans (they must not be the "
                      "test scans: score those with --evaluate)",
              "last": "the last step's weights; the validation scans did not choose them"}


def finetune_optimizer(cfg: FinetuneConfig, model: SegmentationModel) -> torch.optim.AdamW:
    """AdamW over the layer-wise groups (lr scale per depth, weight decay on matrices and kernels)."""
    return adamw(layerwise_groups(model, cfg.optim), cfg.optim)


class FinetuneStep:
    """One ``ssl3d-finetune`` step on a labelled batch (what benchmarks/bench_finetune.py times): the
    runtime's :class:`OptimisationStep` of the segmentation loss on the labelled voxels (in fp32),
    the encoder frozen (no gradient, lr 0) for the first ``optim.freeze_encoder_steps`` steps.
    ``wrapped``: the model under DDP; ``weights``: the class weights of the loss."""

    def __init__(self, cfg: FinetuneConfig, model: SegmentationModel, optimizer: torch.optim.Optimizer,
                 weights: torch.Tensor | None, device: torch.device, wrapped: nn.Module | None = None, rank: int = 0) -> None:
        self.cfg, self.weights, self.device = cfg, weights, device
        self.optimisation = OptimisationStep(model, optimizer, cfg.optim, cfg.run, device, rank=rank, wrapped=wrapped)

    def __call__(self, step: int, batch: LabelledBatch) -> StepReport:
        frozen = step < self.cfg.optim.freeze_encoder_steps
        batch = batch.to(self.device)
        report = self.optimisation(
            step, lambda model: model(batch.voxels.sparse(), freeze_encoder=frozen),
            loss=lambda logits: segmentation_loss(logits.float()[batch.label_voxel], batch.label_class, self.cfg.loss,
                                                  self.weights),
            frozen=frozen)
        report.logged["encoder_frozen"] = float(frozen)
        report.summed = {"labelled_points": len(batch.label_class)}
        report.skipped, report.scans = batch.skipped, batch.num_scans
        return report


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> FinetuneResult:
    """Run (or, with ``resume``, continue) fine-tuning up to ``cfg.run.steps``; ``stop_at`` stops after
    that step as if interrupted (state saved), for time-boxed sessions and tests."""
    run = start_run(cfg.run, resume)
    device = run.device
    init = initial_encoder(cfg, device)  # before the data: a bad checkpoint fails at once
    data = prepare_data(cfg)
    check_input(init.preprocessing, data.selection.scans, cfg.init if not cfg.from_scratch else "preprocessing")
    model = initial_model(init, data, cfg).to(device)
    if cfg.pca_dims > model.encoder.hypercolumn_channels:  # said now, not after the training
        raise ConfigError(f"pca_dims={cfg.pca_dims}: the hypercolumn has {model.encoder.hypercolumn_channels} channels")
    optimizer = finetune_optimizer(cfg, model)
    weights = class_weights(torch.tensor(data.selection.record["class_counts"]), cfg.loss)
    counters: dict[str, Any] = {"scans_seen": 0, "scans_skipped": 0}
    best: dict[str, Any] = {}
    last: dict[str, Any] = {}  # the latest validation
    start_step = 0
    if resume:
        start_step, extra = restore_latest(run, cfg, model, optimizer, counters, MODEL_KEYS,
                                           what="model or label selection")
        best, last = dict(extra.get("best", {})), dict(extra.get("last", {}))
    class_names = list(data.class_map.class_names)
    out_dir = run.out_dir
    if run.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / LABELS_FILE, {**data.selection.record, "class_map": data.class_map.name,
                                                  "class_names": data.class_map.class_names,
                                                  "validation": data.validation_rule})
        if data.skipped and start_step == 0:
            record_skipped(out_dir, 0, 0, data.skipped)

    wrapped = run.wrap(model, find_unused=True)  # the frozen warm-up leaves the encoder without gradients
    dataset = LabelledDataset(ScanList(data.selection.scans), LabelledViewMaker(cfg.augment, init.preprocessing),
                              cfg.data, cfg.run.seed)
    loader = run.loader(dataset, run.sampler(start_step), collate_fn=collate_labelled)

    def validate(at_step: int) -> dict[str, float]:
        """Every ``validation.every`` steps and at the end: score the held-out scans, keep the best."""
        if not data.validation or not (at_step % cfg.validation.every == 0 or at_step == cfg.run.steps):
            return {}
        scores = None
        if run.is_main:
            scores = score_scans(model, data.validation, init.preprocessing, data.class_map.num_classes, device)
            last.clear()
            last.update(validation_record(scores, at_step, class_names))
            if math.isfinite(scores.miou) and scores.miou > best.get("miou", -1.0):
                # per-class IoU too: which classes a few labels reach is what a label budget changes
                best.clear()
                best.update(last)
                export(out_dir / BEST_FILE, model, cfg, data, init.preprocessing, init.provenance, at_step, counters, best)
        distributed.barrier()
        return {} if scores is None else {"val_miou": scores.miou, "val_accuracy": scores.accuracy,
                                          "best_val_miou": best.get("miou", float("nan"))}

    end = run_steps(run, loader, start_step, FinetuneStep(cfg, model, optimizer, weights, device, wrapped, run.dist.rank),
                    model=model, optimizer=optimizer, cfg=cfg, counters=counters, desc="finetune", progress=progress,
                    stop_at=stop_at, after_step=validate, state=lambda: {"best": best, "last": last},
                    shown=("val_miou",))

    completed = end.step >= cfg.run.steps
    model_path, kept = None, {}
    if completed and run.is_main:
        model_path = out_dir / MODEL_FILE
        keep = cfg.validation.keep
        if keep == "best" and best and (out_dir / BEST_FILE).is_file():
            atomic_write(model_path, lambda tmp: shutil.copyfile(out_dir / BEST_FILE, tmp))
        else:
            export(model_path, model, cfg, data, init.preprocessing, init.provenance, end.step, counters, best)
        if cfg.pca_dims > 0:
            add_pca_basis(model_path, data.selection.scans, cfg.pca_dims, device)
        if cfg.novelty_scans > 0:
            add_novelty(model_path, data.selection.scans, cfg.novelty_scans, device, cfg.data.sources)
        if last:
            kept = {"keep": keep, "rule": KEEP_RULES[keep], "validation": data.validation_rule,
                    "scans": len(data.validation), **(best if keep == "best" and best else last),
                    "class_names": class_names}
            atomic_write_json(out_dir / VALIDATION_FILE, kept)
    distributed.barrier()
    return FinetuneResult(end.step, completed, end.interrupted_by, out_dir, model_path, best, kept,
                          counters["scans_skipped"], end.last, data.selection.record)


__all__ = ["finetune", "evaluate", "initial_model", "export", "finetune_optimizer", "FinetuneStep", "EVALUATION_FILE",
           "VALIDATION_FILE", "FinetuneResult", "MODEL_FILE", "BEST_FILE", "LABELS_FILE"]
