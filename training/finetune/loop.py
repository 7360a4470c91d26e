"""The fine-tuning loop, on pretraining's runtime: DDP under torchrun, bf16 autocast on CUDA, the
deterministic resumable sample order, atomic training states (SIGKILL loses at most one
``checkpoint_every`` interval), StopRequest (Ctrl-C / SIGTERM: finish the step, save, exit),
metrics.csv, TensorBoard and a progress bar.

Schedule: warm-up then cosine for every group, each scaled by its layer-wise ``lr_scale``; during
``freeze_encoder_steps`` the encoder gets no gradient (the head learns on fixed features first).
Validation on held-out scans every ``validation.every`` steps (and at the end) keeps the best
checkpoint in OUT/best.safetensors; OUT/model.safetensors is the best one (the last weights when
there is no validation).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl3d_ros.atomic import atomic_write
from ssl3d_ros.config import ConfigError

from .. import distributed, schedules, state as state_io
from ..data import StepSampler, make_loader
from ..loop import ignore_sigint, record_skipped, restore_latest, step_seed, StopRequest
from ..metrics import MetricsLogger
from .config import MODEL_KEYS, FinetuneConfig
from .data import LabelledDataset, LabelledViewMaker, collate_labelled
from .evaluate import score_scans, voxel_hypercolumns
from .labels import ScanList
from .model import SegmentationModel, class_weights, layerwise_groups, segmentation_loss
from .prepare import FinetuneData, InitialEncoder, check_head_classes, check_input, initial_encoder, prepare_data

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
LABELS_FILE = "labels.json"
EVALUATION_FILE = "evaluation.json"


@dataclass
class FinetuneResult:
    step: int
    completed: bool
    interrupted_by: int = 0
    out_dir: Path = Path(".")
    model_path: Path | None = None
    best: dict[str, Any] = field(default_factory=dict)  # {"miou", "accuracy", "step", "iou" per class} of the best validation
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


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, frozen: bool) -> None:
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if frozen and group["encoder"] else lr * group["lr_scale"]


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
    device = distributed.init_distributed(cfg.run.device).device
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
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
    doc = json.dumps(report, indent=1)
    atomic_write(out_dir / EVALUATION_FILE, lambda tmp: tmp.write_text(doc))
    return report


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> FinetuneResult:
    """Run (or, with ``resume``, continue) fine-tuning up to ``cfg.run.steps``; ``stop_at`` stops after
    that step as if interrupted (state saved), for time-boxed sessions and tests."""
    dist_info = distributed.init_distributed(cfg.run.device)
    device, run = dist_info.device, cfg.run
    out_dir = Path(run.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    if not resume and state_io.list_states(ckpt_dir):
        raise ConfigError(f"{out_dir} holds checkpoints of an earlier run: continue it with --resume or choose another --out")

    torch.manual_seed(run.seed)  # identical initial weights (fresh encoder, head) on every rank
    init = initial_encoder(cfg, device)  # before the data: a bad checkpoint fails at once
    data = prepare_data(cfg)
    check_input(init.preprocessing, data.selection.scans, cfg.init if not cfg.from_scratch else "preprocessing")
    model = initial_model(init, data, cfg).to(device)
    if cfg.pca_dims > model.encoder.hypercolumn_channels:  # said now, not after the training
        raise ConfigError(f"pca_dims={cfg.pca_dims}: the hypercolumn has {model.encoder.hypercolumn_channels} channels")
    optimizer = torch.optim.AdamW(layerwise_groups(model, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas)
    weights = class_weights(torch.tensor(data.selection.record["class_counts"]), cfg.loss)
    counters: dict[str, Any] = {"scans_seen": 0, "scans_skipped": 0}
    best: dict[str, Any] = {}
    start_step = 0
    if resume:
        start_step, extra = restore_latest(ckpt_dir, cfg, model, optimizer, counters, dist_info.is_main, MODEL_KEYS,
                                           what="model or label selection")
        best = dict(extra.get("best", {}))
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = json.dumps({**data.selection.record, "class_map": data.class_map.name,
                          "class_names": data.class_map.class_names, "validation": data.validation_rule}, indent=1)
        atomic_write(out_dir / LABELS_FILE, lambda tmp: tmp.write_text(doc))
        if data.skipped and start_step == 0:
            record_skipped(out_dir, 0, 0, data.skipped)

    wrapped: nn.Module = model
    if dist_info.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=True)  # the frozen warm-up leaves the encoder without gradients
    dataset = LabelledDataset(ScanList(data.selection.scans), LabelledViewMaker(cfg.augment, init.preprocessing),
                              cfg.data, run.seed)
    sampler = StepSampler(run.batch_size, run.steps, start_step, dist_info.rank, dist_info.world_size)
    loader = make_loader(dataset, sampler, run.workers, pin_memory=device.type == "cuda",
                         worker_init_fn=ignore_sigint, collate_fn=collate_labelled)
    logger = MetricsLogger(out_dir, run.tensorboard, resume_step=start_step) if dist_info.is_main else None
    bar = None
    if progress and dist_info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=run.steps, initial=start_step, desc="finetune", unit="step", dynamic_ncols=True)

    use_bf16 = device.type == "cuda" and run.precision == "bf16"
    step, last, interrupted = start_step, {}, 0

    def save(at_step: int) -> None:
        if dist_info.is_main:
            state_io.save_state(ckpt_dir, at_step, model.state_dict(), optimizer.state_dict(),
                                {"counters": counters, "config": cfg.to_dict(), "best": best}, keep=run.keep_checkpoints)
        distributed.barrier()

    def validate(at_step: int) -> dict[str, float]:
        if not data.validation:
            return {}
        scores = None
        if dist_info.is_main:
            scores = score_scans(model, data.validation, init.preprocessing, data.class_map.num_classes, device)
            if math.isfinite(scores.miou) and scores.miou > best.get("miou", -1.0):
                # per-class IoU too: which classes a few labels reach is what a label budget changes
                iou = scores.to_dict(list(data.class_map.class_names))["iou"]
                best.update(miou=scores.miou, accuracy=scores.accuracy, step=at_step, iou=iou)
                export(out_dir / BEST_FILE, model, cfg, data, init.preprocessing, init.provenance, at_step, counters, best)
        distributed.barrier()
        return {} if scores is None else {"val_miou": scores.miou, "val_accuracy": scores.accuracy,
                                          "best_val_miou": best.get("miou", float("nan"))}

    model.train()
    tick = time.perf_counter()
    with StopRequest() as stop:
        for batch in loader:
            frozen = step < cfg.optim.freeze_encoder_steps
            lr = schedules.warmup_cosine(step, run.steps, cfg.optim.warmup_steps, cfg.optim.lr, cfg.optim.min_lr)
            set_learning_rates(optimizer, lr, frozen)
            torch.manual_seed(step_seed(run.seed, step, dist_info.rank))
            batch = batch.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = wrapped(batch.voxels.sparse(), freeze_encoder=frozen)
            losses = segmentation_loss(logits.float()[batch.label_voxel], batch.label_class, cfg.loss, weights)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = (nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                         if cfg.optim.grad_clip > 0 else torch.zeros(()))
            optimizer.step()
            step += 1

            # one small all-reduce per step: metrics averaged, counts summed, the stop flag shared
            keys = sorted(losses)
            packed = torch.stack([losses[k].detach().float().reshape(()) for k in keys] + [
                grad_norm.detach().float().reshape(()).to(device),
                torch.tensor(float(len(batch.label_class)), device=device),
                torch.tensor(float(len(batch.skipped)), device=device),
                torch.tensor(float(batch.num_scans), device=device),
                torch.tensor(float(stop.signum), device=device),
            ])
            distributed.all_reduce_sum(packed)
            values = packed.tolist()
            n = dist_info.world_size
            if not math.isfinite(values[keys.index("loss")]):
                raise FloatingPointError(f"non-finite loss at step {step - 1}: {dict(zip(keys, values))}")
            if batch.skipped:
                record_skipped(out_dir, dist_info.rank, step, batch.skipped)
            counters["scans_skipped"] += int(values[-3])
            counters["scans_seen"] += int(values[-2])
            if values[-1] > 0:
                interrupted = stop.signum or int(signal.SIGTERM)
            now = time.perf_counter()
            last = {k: v / n for k, v in zip(keys, values)}
            last.update(lr=lr, encoder_frozen=float(frozen), grad_norm=values[-5] / n, labelled_points=values[-4],
                        scans_per_s=values[-2] / max(now - tick, 1e-9), scans_skipped=counters["scans_skipped"])
            if step % cfg.validation.every == 0 or step == run.steps:
                last.update(validate(step))
            tick = time.perf_counter()  # validation time is not training throughput
            if logger is not None and (step % run.log_every == 0 or step == run.steps or "val_miou" in last):
                logger.log(step, last)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", scans_s=f"{last['scans_per_s']:.1f}",
                                **({"val_miou": f"{last['val_miou']:.3f}"} if "val_miou" in last else {}))
            stopping = bool(interrupted) or (stop_at is not None and step >= stop_at)
            if step % run.checkpoint_every == 0 or step == run.steps or stopping:
                save(step)
            if stopping:
                break

    if bar is not None:
        bar.close()
    completed = step >= run.steps
    model_path = None
    if completed and dist_info.is_main:
        model_path = out_dir / MODEL_FILE
        if best and (out_dir / BEST_FILE).is_file():
            atomic_write(model_path, lambda tmp: shutil.copyfile(out_dir / BEST_FILE, tmp))
        else:
            export(model_path, model, cfg, data, init.preprocessing, init.provenance, step, counters, best)
        if cfg.pca_dims > 0:
            add_pca_basis(model_path, data.selection.scans, cfg.pca_dims, device)
    distributed.barrier()
    if logger is not None:
        logger.close()
    return FinetuneResult(step, completed, interrupted, out_dir, model_path, best, counters["scans_skipped"], last,
                          data.selection.record)


__all__ = ["finetune", "evaluate", "initial_model", "export", "EVALUATION_FILE", "FinetuneResult", "MODEL_FILE", "BEST_FILE", "LABELS_FILE"]
