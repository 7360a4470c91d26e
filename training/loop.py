"""The pretraining loop: one recipe, AdamW + warm-up/cosine, EMA schedule, clipping, bf16 on CUDA,
DDP, resumable checkpoints, metrics, clean stops.

Determinism: every random draw of step s (augmentations, masks, dropout) comes from generators seeded
with (seed, step, rank) or (seed, sample position), so a resumed run continues exactly as an
uninterrupted one (on the same hardware and worker count-independent).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl3d_ros.config import ConfigError, to_dict
from ssl3d_ros.models.encoder import build_encoder
from ssl3d_ros.preprocessing import feature_channels

from . import distributed, schedules, state as state_io
from .config import PretrainConfig, encoder_config
from .data import SAMPLE_COUNTERS, PretrainDataset, StepSampler, make_loader, open_data, skip_kind, skip_summary
from .ema import momentum_at
from .metrics import MetricsLogger
from .recipes import Recipe, StepInfo, recipe_class
from .voxels import views_to

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


def build_encoder_factory(cfg: PretrainConfig, in_channels: int, overrides: dict[str, Any] | None = None):
    """Encoder constructor: the ``encoder`` section (size preset + overrides), input channels from the
    preprocessing features, plus what the recipe needs (msm: the decoder)."""
    return functools.partial(build_encoder, encoder_config(cfg.encoder, in_channels, overrides))


def build_recipe(cfg: PretrainConfig) -> Recipe:
    in_channels = feature_channels(cfg.preprocessing)
    cls = recipe_class(cfg.recipe_name)
    overrides = cls.encoder_overrides(cfg.recipe) if hasattr(cls, "encoder_overrides") else {}
    return cls(cfg.recipe, build_encoder_factory(cfg, in_channels, overrides), cfg.preprocessing, in_channels)


def distributed_model(recipe: Recipe, device: torch.device) -> nn.Module:
    """``recipe`` under DDP, without ``find_unused_parameters``: the parameters the recipe never uses
    (``Recipe.unused_parameters``) are excluded from gradient synchronisation instead, which saves an
    autograd traversal per step. Buffers are not re-broadcast before every forward (the weights and
    buffers start identical on every rank: same seed, or the same resumed state)."""
    ddp = nn.parallel.DistributedDataParallel
    ddp._set_params_and_buffers_to_ignore_for_model(recipe, recipe.unused_parameters())
    # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers; earlier versions lack the latter
    no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                       else {"broadcast_buffers": False})
    return ddp(recipe, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False,
               **no_forward_sync)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only (not on biases, norms, tokens, prototypes' scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


class StopRequest:
    """First SIGINT/SIGTERM: finish the current step, save, exit. A second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers (tests calling train in a thread)
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing this step, saving a checkpoint and exiting", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_sigint(_worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: workers leave Ctrl-C to the main process, which stops
    after the current step (pretraining and fine-tuning)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def record_skipped(out_dir: Path, rank: int, step: int, skipped: list[tuple[str, str]]) -> None:
    """Append unreadable scans to OUT/skipped_scans.tsv (one short O_APPEND write per step and rank)."""
    lines = "".join(f"{step}\t{rank}\t{where}\t{reason.replace(chr(9), ' ').replace(chr(10), ' ')}\n" for where, reason in skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "skipped_scans.tsv", "a", encoding="utf-8") as f:
        f.write(lines)


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


def export_encoder(path: Path, recipe: Recipe, cfg: PretrainConfig, step: int, counters: dict[str, Any]) -> Path:
    """The node-loadable checkpoint (ssl3d_ros.checkpoint format) of the pretrained encoder."""
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
    return path


#: config sections that shape the weights: a resumed run must keep them (data, optim and run may change)
MODEL_SECTIONS = ("preprocessing", "encoder", "recipe")


def model_config_changes(saved: dict[str, Any], cfg: PretrainConfig,
                         sections: tuple[str, ...] = MODEL_SECTIONS) -> list[str]:
    """``KEY: saved -> now`` for every entry of the model-shaping ``sections`` that differs from the
    config a training state was written with (any config with ``to_dict()``: fine-tuning passes its own).

    An entry the saved config lacks and that holds its field's default now is no change: it was added
    to the code after the state was written, with a default that keeps the old behaviour (e.g. a new
    augmentation, off by default), so a long run resumes across such an upgrade."""
    now = json.loads(json.dumps(cfg.to_dict()))  # the saved config went through JSON (tuples -> lists)
    changes: list[str] = []

    def walk(a: Any, b: Any, key: str, live: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k not in a and holds_default(live, k, b[k]):
                    continue
                walk(a.get(k), b.get(k), f"{key}.{k}", child(live, k))
        elif a != b:
            changes.append(f"{key}: {a!r} -> {b!r}")

    for section in sections:
        walk(saved.get(section), now.get(section), section, getattr(cfg, section, None))
    return changes


def child(live: Any, key: str) -> Any:
    """The live config object under ``key`` (a dataclass field, a dict entry), None when unknown."""
    if isinstance(live, dict):
        return live.get(key)
    if dataclasses.is_dataclass(live):
        return getattr(live, key, getattr(live, f"{key}_", None))
    return None


def holds_default(live: Any, key: str, value: Any) -> bool:
    """True when ``key`` is a field of the dataclass ``live`` and ``value`` (JSON form) is its default."""
    if not dataclasses.is_dataclass(live):
        return False
    spec = {f.name.rstrip("_"): f for f in dataclasses.fields(live)}.get(key)
    if spec is None:
        return False
    if spec.default is not dataclasses.MISSING:
        default = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        default = spec.default_factory()
    else:
        return False
    return json.loads(json.dumps(to_dict(default))) == value


def restore_latest(ckpt_dir: Path, cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
                   counters: dict[str, Any], is_main: bool, sections: tuple[str, ...] = MODEL_SECTIONS,
                   what: str = "model") -> tuple[int, dict[str, Any]]:
    """``--resume``: load the newest training state of ``ckpt_dir`` into ``model``/``optimizer``/``counters``
    and return (its step, its extra data); (0, {}) when there is none. A state written with another
    config in ``sections`` is refused (ConfigError naming each change), never loaded half."""
    saved = state_io.load_latest(ckpt_dir)
    if saved is None:
        log.warning("--resume: no training state in %s; starting from step 0", ckpt_dir)
        return 0, {}
    changed = model_config_changes(saved.extra.get("config", {}), cfg, sections)
    if changed:
        raise ConfigError(f"{saved.path} was written with another {what}: {'; '.join(changed)}. Resume with "
                          "the config that started the run, or choose another --out")
    model.load_state_dict(saved.model)
    optimizer.load_state_dict(saved.optimizer)
    counters.update(saved.extra.get("counters", {}))
    if is_main:
        log.info("resumed from %s at step %d", saved.path, saved.step)
    return saved.step, saved.extra


def train(cfg: PretrainConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Run (or, with ``resume``, continue) pretraining up to ``cfg.run.steps``.

    ``stop_at``: stop after that step as if interrupted (state saved; schedules still span
    ``run.steps``), for time-boxed sessions and tests of resumption.
    """
    dist_info = distributed.init_distributed(cfg.run.device)
    device = dist_info.device
    run = cfg.run
    out_dir = Path(run.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if run.threads > 0:
        torch.set_num_threads(run.threads)

    if not resume and state_io.list_states(ckpt_dir):
        raise ConfigError(f"{out_dir} holds checkpoints of an earlier run: continue it with --resume or choose another --out")

    source = open_data(cfg.data)  # before the model is built: a bad --data fails at once
    torch.manual_seed(run.seed)  # identical initial weights on every rank
    recipe = build_recipe(cfg).to(device)
    optimizer = torch.optim.AdamW(param_groups(recipe, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas)
    counters: dict[str, Any] = {"scans_seen": 0, "scans_skipped": 0, **dict.fromkeys(SAMPLE_COUNTERS, 0)}
    start_step = 0
    if resume:
        start_step, _ = restore_latest(ckpt_dir, cfg, recipe, optimizer, counters, dist_info.is_main)

    model: nn.Module = distributed_model(recipe, device) if dist_info.distributed else recipe
    ignored = [p for n, p in recipe.named_parameters() if n in set(recipe.unused_parameters())]

    dataset = PretrainDataset(source, recipe.view_maker(), cfg.data, run.seed, cache_dir=str(out_dir / "registration"))
    sampler = StepSampler(run.batch_size, run.steps, start_step, dist_info.rank, dist_info.world_size)
    # Data that cannot be trained on at all fails here, before training starts, with its own error
    # (UnusableDataError): raised in a DataLoader worker it would come back wrapped in the worker's traceback.
    if start_step < run.steps:
        dataset[sampler.positions(start_step)[0]]
    loader = make_loader(dataset, sampler, run.workers, pin_memory=device.type == "cuda", worker_init_fn=ignore_sigint)

    logger = MetricsLogger(out_dir, run.tensorboard, resume_step=start_step) if dist_info.is_main else None
    bar = None
    if progress and dist_info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=run.steps, initial=start_step, desc=f"pretrain {cfg.recipe_name}", unit="step", dynamic_ncols=True)

    use_bf16 = device.type == "cuda" and run.precision == "bf16"
    global_batch = run.batch_size * dist_info.world_size
    base_lr = cfg.optim.lr * (global_batch / cfg.optim.lr_batch if cfg.optim.lr_batch > 0 else 1.0)
    step = start_step
    last: dict[str, float] = {}
    interrupted = 0
    # Skips are summarised (at checkpoints) instead of logged one line each: on sparse real scans
    # they came by the hundred. This rank's, since this process started; every one is in skipped_scans.tsv.
    skip_kinds: Counter = Counter()
    skips_logged = 0

    def log_skips() -> None:
        nonlocal skips_logged
        total = sum(skip_kinds.values())
        if total > skips_logged:
            log.info("rank %d: %s", dist_info.rank, skip_summary(skip_kinds, total))
            skips_logged = total

    def save(at_step: int) -> None:
        if dist_info.is_main:
            state_io.save_state(ckpt_dir, at_step, recipe.state_dict(), optimizer.state_dict(),
                                {"counters": counters, "config": cfg.to_dict()}, keep=run.keep_checkpoints)
        distributed.barrier()

    recipe.train()
    tick = time.perf_counter()
    with StopRequest() as stop:
        for batch in loader:
            lr = schedules.warmup_cosine(step, run.steps, cfg.optim.warmup_steps, base_lr, cfg.optim.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed = step_seed(run.seed, step, dist_info.rank)
            torch.manual_seed(seed)
            info = StepInfo(step, run.steps, momentum_at(step, run.steps, cfg.optim.ema_momentum, cfg.optim.ema_momentum_end),
                            torch.Generator().manual_seed(seed))
            views = views_to(batch.views, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                losses = model(views, info)
            loss = losses["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if any(p.grad is not None for p in ignored):
                raise RuntimeError(f"{cfg.recipe_name}: a parameter of unused_parameters() {recipe.unused_parameters()} "
                                   "got a gradient; DDP would leave it unsynchronised between ranks")
            grad_norm = (nn.utils.clip_grad_norm_(recipe.parameters(), cfg.optim.grad_clip)
                         if cfg.optim.grad_clip > 0 else torch.zeros(()))
            optimizer.step()
            recipe.on_step_end(info)
            step += 1

            # One small all-reduce per step: metrics averaged over ranks, skip counts summed, and the
            # stop flag, so that every rank stops after the same step.
            keys = sorted(losses)
            extras = {"grad_norm": grad_norm.detach().float().reshape(()), **batch.counts,
                      "skipped": len(batch.skipped), "scans": batch.num_scans, "stop": stop.signum}
            extra_keys = ["grad_norm", *SAMPLE_COUNTERS, "skipped", "scans", "stop"]  # the same on every rank
            packed = torch.stack([torch.as_tensor(losses[k]).detach().float().reshape(()).to(device) for k in keys] + [
                torch.as_tensor(extras.get(k, 0), dtype=torch.float32).reshape(()).to(device) for k in extra_keys
            ])
            distributed.all_reduce_sum(packed)
            values = packed.tolist()
            summed = dict(zip(extra_keys, values[len(keys):]))
            n = dist_info.world_size
            if not math.isfinite(values[keys.index("loss")]):
                raise FloatingPointError(f"non-finite loss at step {step - 1}: {dict(zip(keys, values))}")
            if batch.skipped:
                record_skipped(out_dir, dist_info.rank, step, batch.skipped)
                skip_kinds.update(skip_kind(reason) for _, reason in batch.skipped)
            for key in SAMPLE_COUNTERS:
                counters[key] += int(summed[key])
            counters["scans_skipped"] += int(summed["skipped"])
            counters["scans_seen"] += int(summed["scans"])
            if summed["stop"] > 0:
                interrupted = stop.signum or int(signal.SIGTERM)
            now = time.perf_counter()
            last = {k: v / n for k, v in zip(keys, values)}
            last.update(lr=lr, ema_momentum=info.ema_momentum, grad_norm=summed["grad_norm"] / n,
                        scans_per_s=summed["scans"] / max(now - tick, 1e-9), scans_skipped=counters["scans_skipped"],
                        **{key: counters[key] for key in SAMPLE_COUNTERS})
            tick = now
            if logger is not None and (step % run.log_every == 0 or step == run.steps):
                logger.log(step, last)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", scans_s=f"{last['scans_per_s']:.1f}", skipped=counters["scans_skipped"])
            stopping = bool(interrupted) or (stop_at is not None and step >= stop_at)
            if step % run.checkpoint_every == 0 or step == run.steps or stopping:
                save(step)
                log_skips()
            if stopping:
                break

    if bar is not None:
        bar.close()
    encoder_path = None
    completed = step >= run.steps
    if completed and dist_info.is_main:
        encoder_path = export_encoder(out_dir / "encoder.safetensors", recipe, cfg, step, counters)
    distributed.barrier()
    if logger is not None:
        logger.close()
    return TrainResult(step, completed, interrupted, out_dir, encoder_path, counters["scans_skipped"], last, recipe)


__all__ = ["train", "build_recipe", "distributed_model", "build_encoder_factory", "export_encoder", "TrainResult", "EXIT_INTERRUPTED", "step_seed"]
