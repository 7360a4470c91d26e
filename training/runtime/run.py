"""A training run as ``ssl3d-pretrain`` and ``ssl3d-finetune`` run it: set-up, the optimisation step,
the step loop and the resumable states. The commands differ in their model, data, loss and outputs;
everything here is the same for both, and the benchmarks time :class:`OptimisationStep` itself.

Determinism: every random draw of step s comes from generators seeded with (seed, step, rank) (the
global torch generator is re-seeded before each step) or (seed, sample position) in the data, so a
resumed run continues exactly as an uninterrupted one (on the same hardware, whatever the worker count).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import signal
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ssl3d_ros.config import ConfigError, to_dict

from .. import distributed, schedules, state as state_io
from ..data import StepSampler, make_loader, skip_kind, skip_summary
from ..metrics import MetricsLogger

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ set-up


@dataclass
class Run:
    """Where a run executes: its ``run`` config section (RunConfig, FinetuneRunConfig) and process group."""
    cfg: Any
    dist: distributed.DistInfo

    @classmethod
    def start(cls, run_cfg: Any) -> "Run":
        """The process group under torchrun (NCCL on CUDA, gloo on CPU), this rank's device, torch's
        CPU threads (:func:`torch_threads` of ``run.threads``)."""
        dist_info = distributed.init_distributed(run_cfg.device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
        threads = torch_threads(run_cfg.threads, run_cfg.workers, max(1, cores // max(1, local_processes)))
        torch.set_num_threads(threads)
        log.debug("torch CPU threads: %d (run.threads %d, %d DataLoader workers)", threads, run_cfg.threads,
                  run_cfg.workers)
        return cls(run_cfg, dist_info)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def sampler(self, start_step: int) -> StepSampler:
        """This rank's sample positions of every step from ``start_step`` (the same order resumed or not)."""
        return StepSampler(self.cfg.batch_size, self.cfg.steps, start_step, self.dist.rank, self.dist.world_size)

    def loader(self, dataset, sampler: StepSampler, **options) -> torch.utils.data.DataLoader:
        """``run.workers`` processes that leave Ctrl-C to this one (it stops after the current step)."""
        return make_loader(dataset, sampler, self.cfg.workers, pin_memory=self.device.type == "cuda",
                           worker_init_fn=_leave_signals_to_main, **options)

    def wrap(self, model: nn.Module, ignore: Iterable[str] = (), find_unused: bool = False) -> nn.Module:
        """``model`` under DDP when a process group is up (torchrun), else ``model`` itself.

        ``ignore``: parameters that never get a gradient, left out of gradient synchronisation instead
        of ``find_unused_parameters`` (which costs an autograd traversal per step); ``find_unused``
        for a model whose unused parameters change from step to step (fine-tuning's frozen warm-up).
        Buffers are not re-broadcast before every forward: they start identical on every rank (same
        seed, or the same resumed state)."""
        if not self.dist.distributed:
            return model
        ddp = nn.parallel.DistributedDataParallel
        ddp._set_params_and_buffers_to_ignore_for_model(model, list(ignore))
        # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers; earlier versions lack the latter
        no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                           else {"broadcast_buffers": False})
        return ddp(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   find_unused_parameters=find_unused, **no_forward_sync)


def torch_threads(threads: int, workers: int, cores: int) -> int:
    """torch's CPU threads for ``run.threads``: that many when > 0; 0 is auto, one per core the
    ``workers`` DataLoader processes leave (at least one), so that the trainer and its workers do not
    oversubscribe the machine (torch's own default, one thread per core, ran beside 2 workers on 2 cores)."""
    return threads if threads > 0 else max(1, cores - workers)


def start_run(run_cfg: Any, resume: bool) -> Run:
    """:meth:`Run.start`, then: an out folder holding an earlier run's states is refused without
    ``resume``; the global torch generator is seeded with ``run.seed`` (identical initial weights on
    every rank)."""
    run = Run.start(run_cfg)
    if not resume and state_io.list_states(run.ckpt_dir):
        raise ConfigError(f"{run.out_dir} holds checkpoints of an earlier run: continue it with --resume or choose another --out")
    torch.manual_seed(run_cfg.seed)
    return run


# ------------------------------------------------------------------------------ the optimisation step


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only (not on biases, norms, tokens, prototypes' scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]], optim: Any) -> torch.optim.AdamW:
    """AdamW over ``groups`` with the ``optim`` section's lr and betas."""
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, frozen: bool = False) -> None:
    """``lr`` times each group's ``lr_scale`` (1 without one); 0 for ``encoder`` groups while ``frozen``."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if frozen and group.get("encoder", False) else lr * group.get("lr_scale", 1.0)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class StepReport:
    """One step's results for the loop: what it logs and sums over the ranks."""
    losses: dict[str, torch.Tensor]  # "loss" and its terms, averaged over the ranks
    grad_norm: torch.Tensor  # before clipping, averaged over the ranks
    logged: dict[str, float]  # this rank's values logged as they are (lr first), after the losses
    summed: dict[str, float] = field(default_factory=dict)  # this step's counts, summed over the ranks
    counted: dict[str, float] = field(default_factory=dict)  # counts summed over ranks and steps (run counters)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (scan, reason) this rank could not use
    scans: int = 0  # scans this rank trained on


class OptimisationStep:
    """The optimisation step of both commands: the step's learning rate (warm-up then cosine over
    ``run.steps``, per group scaled), the global torch generator seeded from (seed, step, rank), the
    forward under bf16 autocast on CUDA (``run.precision``), the loss outside it, backward, clipping of
    the global gradient norm (``optim.grad_clip``; 0: off) and the optimizer step.

    ``model`` owns the parameters (clipped); ``wrapped`` (default ``model``) is what runs forward: its
    DDP wrapper under torchrun. ``optim``: lr, min_lr, warmup_steps, grad_clip; ``base_lr`` overrides
    ``optim.lr`` as the schedule's peak. ``check_gradients`` runs after backward."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, optim: Any, run_cfg: Any,
                 device: torch.device, *, base_lr: float | None = None, rank: int = 0, wrapped: nn.Module | None = None,
                 check_gradients: Callable[[], None] | None = None) -> None:
        self.model, self.optimizer, self.optim, self.run_cfg, self.device = model, optimizer, optim, run_cfg, device
        self.base_lr = optim.lr if base_lr is None else base_lr
        self.rank = rank
        self.wrapped = model if wrapped is None else wrapped
        self.check_gradients = check_gradients

    def seed_at(self, step: int) -> int:
        return step_seed(self.run_cfg.seed, step, self.rank)

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA with ``run.precision`` bf16; CPU always runs fp32."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.device.type == "cuda" and self.run_cfg.precision == "bf16")

    def __call__(self, step: int, forward: Callable[[nn.Module], Any],
                 loss: Callable[[Any], dict[str, torch.Tensor]] | None = None, frozen: bool = False) -> StepReport:
        """``forward(wrapped)`` under autocast gives the losses, or what ``loss`` makes them of (in fp32,
        outside autocast); ``frozen``: the ``encoder`` groups' learning rate is 0."""
        lr = schedules.warmup_cosine(step, self.run_cfg.steps, self.optim.warmup_steps, self.base_lr, self.optim.min_lr)
        set_learning_rates(self.optimizer, lr, frozen)
        torch.manual_seed(self.seed_at(step))
        with self.autocast():
            out = forward(self.wrapped)
        losses = out if loss is None else loss(out)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.check_gradients is not None:
            self.check_gradients()
        grad_norm = (nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
                     if self.optim.grad_clip > 0 else torch.zeros(()))
        self.optimizer.step()
        return StepReport(losses, grad_norm, {"lr": lr})


# ------------------------------------------------------------------------------------------ the loop


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


def _leave_signals_to_main(_worker_id: int) -> None:
    # Workers leave Ctrl-C and SIGTERM to the main process, which stops after the current step: a
    # SIGTERM to the whole process group (docker stop, systemd, pkill -f) killed a worker first, and the
    # main process then failed with a traceback instead of saving.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def record_skipped(out_dir: Path, rank: int, step: int, skipped: list[tuple[str, str]]) -> None:
    """Append unreadable scans to OUT/skipped_scans.tsv (one short O_APPEND write per step and rank)."""
    lines = "".join(f"{step}\t{rank}\t{where}\t{reason.replace(chr(9), ' ').replace(chr(10), ' ')}\n" for where, reason in skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "skipped_scans.tsv", "a", encoding="utf-8") as f:
        f.write(lines)


def reduce_report(report: StepReport, step: int, stop: int, run: Run) -> tuple[dict[str, float], dict[str, float]]:
    """One small all-reduce after ``step``: the losses and ``grad_norm`` averaged over the ranks, the
    counts and the stop flag (so that every rank stops after the same step) summed. Raises
    FloatingPointError on a non-finite loss."""
    keys = sorted(report.losses)
    extras = {"grad_norm": report.grad_norm.detach().float().reshape(()), **report.summed, **report.counted,
              "skipped": len(report.skipped), "scans": report.scans, "stop": stop}
    packed = torch.stack([torch.as_tensor(report.losses[k]).detach().float().reshape(()).to(run.device) for k in keys] + [
        torch.as_tensor(v, dtype=torch.float32).reshape(()).to(run.device) for v in extras.values()])
    distributed.all_reduce_sum(packed)
    values = packed.tolist()
    if not math.isfinite(values[keys.index("loss")]):
        raise FloatingPointError(f"non-finite loss at step {step}: {dict(zip(keys, values))}")
    n = run.dist.world_size
    means = {k: v / n for k, v in zip(keys, values)}
    sums = dict(zip(extras, values[len(keys):]))
    sums["grad_norm"] /= n
    return means, sums


def save_state(run: Run, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
    """Rank 0 writes the training state of ``step`` (the newest ``run.keep_checkpoints`` are kept);
    every rank waits for it."""
    if run.is_main:
        state_io.save_state(run.ckpt_dir, step, model.state_dict(), optimizer.state_dict(), extra,
                            keep=run.cfg.keep_checkpoints)
    distributed.barrier()


@dataclass
class LoopEnd:
    step: int  # steps completed
    interrupted_by: int  # signal number, 0 if none
    last: dict[str, float]  # the last step's metrics


def run_steps(run: Run, loader: Iterable, start_step: int, train_step: Callable[[int, Any], StepReport], *,
              model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Any, counters: dict[str, Any], desc: str,
              progress: bool = True, stop_at: int | None = None,
              after_step: Callable[[int], dict[str, float]] | None = None,
              state: Callable[[], dict[str, Any]] = dict, shown: tuple[str, ...] = ()) -> LoopEnd:
    """``train_step(step, batch)`` for every batch of ``loader`` (steps ``start_step``...), then per step:
    the all-reduce (:func:`reduce_report`), unreadable scans in OUT/skipped_scans.tsv, ``counters``
    (scans_seen, scans_skipped and every ``counted`` count), the metrics (losses, ``logged``, grad_norm,
    ``summed``, scans_per_s, scans_skipped, the ``counted`` totals, then ``after_step(step)``'s, e.g.
    validation, whose time is not counted as training) to metrics.csv / TensorBoard every
    ``run.log_every`` steps, the last step and whenever ``after_step`` gave any, and the progress bar
    (``shown``: more of the metrics on it). A training state (``model``, ``optimizer``, counters,
    ``cfg.to_dict()`` and ``state()``) is saved every ``run.checkpoint_every`` steps, at the end and
    when stopping: after a SIGINT/SIGTERM (:class:`StopRequest`) or ``stop_at`` (as if interrupted;
    schedules still span ``run.steps``). Skips are summarised in the log at each save, not one line
    each (on sparse real scans they came by the hundred)."""
    run_cfg = run.cfg
    logger = MetricsLogger(run.out_dir, run_cfg.tensorboard, resume_step=start_step) if run.is_main else None
    bar = None
    if progress and run.is_main:
        from tqdm import tqdm

        bar = tqdm(total=run_cfg.steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True)
    step, last, interrupted = start_step, {}, 0
    # this rank's skips since this process started; every one is in skipped_scans.tsv
    skip_kinds: Counter = Counter()
    skips_logged = 0

    def save(at_step: int) -> None:
        nonlocal skips_logged
        save_state(run, at_step, model, optimizer, {"counters": counters, "config": cfg.to_dict(), **state()})
        total = sum(skip_kinds.values())
        if total > skips_logged:
            log.info("rank %d: %s", run.dist.rank, skip_summary(skip_kinds, total))
            skips_logged = total

    model.train()
    tick = time.perf_counter()
    try:
        with StopRequest() as stop:
            for batch in loader:
                report = train_step(step, batch)
                means, sums = reduce_report(report, step, stop.signum, run)
                step += 1
                if report.skipped:
                    record_skipped(run.out_dir, run.dist.rank, step, report.skipped)
                    skip_kinds.update(skip_kind(reason) for _, reason in report.skipped)
                for key in report.counted:
                    counters[key] += int(sums[key])
                counters["scans_skipped"] += int(sums["skipped"])
                counters["scans_seen"] += int(sums["scans"])
                if sums["stop"] > 0:
                    interrupted = stop.signum or int(signal.SIGTERM)
                last = {**means, **report.logged, "grad_norm": sums["grad_norm"], **{k: sums[k] for k in report.summed},
                        "scans_per_s": sums["scans"] / max(time.perf_counter() - tick, 1e-9),
                        "scans_skipped": counters["scans_skipped"], **{k: counters[k] for k in report.counted}}
                more = after_step(step) if after_step is not None else {}
                last.update(more)
                tick = time.perf_counter()  # validation time is not training throughput
                if logger is not None and (step % run_cfg.log_every == 0 or step == run_cfg.steps or more):
                    logger.log(step, last)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", scans_s=f"{last['scans_per_s']:.1f}",
                                    skipped=counters["scans_skipped"],
                                    **{k: f"{last[k]:.3f}" for k in shown if k in last})
                stopping = bool(interrupted) or (stop_at is not None and step >= stop_at)
                if step % run_cfg.checkpoint_every == 0 or step == run_cfg.steps or stopping:
                    save(step)
                if stopping:
                    break
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    return LoopEnd(step, interrupted, last)


# ----------------------------------------------------------------------------------- resumable states


def model_config_changes(saved: dict[str, Any], cfg: Any, sections: tuple[str, ...]) -> list[str]:
    """``KEY: saved -> now`` for every entry of the model-shaping ``sections`` that differs from the
    config a training state was written with (any config with ``to_dict()``).

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


def restore_latest(run: Run, cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer, counters: dict[str, Any],
                   sections: tuple[str, ...], what: str = "model") -> tuple[int, dict[str, Any]]:
    """``--resume``: load the newest training state of the run's checkpoints into ``model``/``optimizer``/
    ``counters`` and return (its step, its extra data); (0, {}) when there is none. A state written with
    another config in ``sections`` is refused (ConfigError naming each change), never loaded half."""
    saved = state_io.load_latest(run.ckpt_dir)
    if saved is None:
        log.warning("--resume: no training state in %s; starting from step 0", run.ckpt_dir)
        return 0, {}
    changed = model_config_changes(saved.extra.get("config", {}), cfg, sections)
    if changed:
        raise ConfigError(f"{saved.path} was written with another {what}: {'; '.join(changed)}. Resume with "
                          "the config that started the run, or choose another --out")
    model.load_state_dict(saved.model)
    optimizer.load_state_dict(saved.optimizer)
    counters.update(saved.extra.get("counters", {}))
    if run.is_main:
        log.info("resumed from %s at step %d", saved.path, saved.step)
    return saved.step, saved.extra


__all__ = ["Run", "start_run", "torch_threads", "param_groups", "adamw", "set_learning_rates", "step_seed", "StepReport",
           "OptimisationStep", "StopRequest", "record_skipped", "reduce_report", "save_state", "LoopEnd", "run_steps",
           "model_config_changes", "restore_latest"]
