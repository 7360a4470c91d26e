"""Pretraining throughput per recipe (scans/s), against a plain encoder step measured in the same run.

For each recipe config in ``config/pretrain/`` it builds the recipe exactly as ``ssl3d-pretrain``
does, makes its views from the same simulated scans, and times ``ssl3d-pretrain``'s own step
(``training.loop.PretrainStep``: learning-rate schedule, recipe forward, backward, gradient clipping,
AdamW over the weight-decay groups, EMA update), view making excluded (the DataLoader workers do that
in parallel). The baseline is the same runtime step (``runtime.run.OptimisationStep``) of the encoder
alone: one forward + backward + AdamW step on the same scans' largest view with a trivial loss; the
ratio says how many plain encoder steps a recipe step costs.

    python benchmarks/bench_training.py --recipes sonata msm jepa mae acl --steps 8 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ssl3d_ros.io import open_source
from ssl3d_ros.sim import simulate_sequence
from ssl3d_ros.training.config import load_config
from ssl3d_ros.training.data import Batch
from ssl3d_ros.training.loop import PretrainStep, build_recipe, pretrain_optimizer
from ssl3d_ros.training.runtime.run import OptimisationStep, adamw, param_groups
from ssl3d_ros.training.voxels import views_to

REPO = Path(__file__).resolve().parents[1]


def _time_steps(step_fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    # CUDA work is asynchronous: a step ends when the device is done with it
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup):
        step_fn(i)
    times = []
    for i in range(steps):
        sync()
        started = time.perf_counter()
        step_fn(warmup + i)
        sync()
        times.append(time.perf_counter() - started)
    return times


def bench_recipe(name: str, scans, steps: int, warmup: int, device: torch.device, precision: str = "fp32",
                 size: str | None = None) -> dict:
    """``precision`` bf16: the steps run under bf16 autocast on CUDA, as ``ssl3d-pretrain`` does there;
    ``size``: the encoder size preset instead of the config's."""
    cfg = load_config(REPO / "config" / "pretrain" / f"{name}.yaml")
    if size:
        cfg.encoder = {**cfg.encoder, "size": size}
    cfg.run.precision = precision
    cfg.run.steps = warmup + steps  # the span of the learning-rate and EMA schedules
    torch.manual_seed(0)
    recipe = build_recipe(cfg).to(device).train()
    pretrain_step = PretrainStep(cfg, recipe, pretrain_optimizer(cfg, recipe), device)
    views = views_to(recipe.make_views(scans, np.random.default_rng(0)), device)
    batch = Batch(views, [], len(scans))
    recipe_times = _time_steps(lambda step: pretrain_step(step, batch), steps, warmup, device)

    # Baseline: the same encoder, one forward + backward + step on the largest view of these scans.
    encoder = recipe.student_encoder
    largest = max((v for group in views.values() for v in group), key=lambda v: v.feat.shape[0])
    x = largest.sparse()
    encoder_step = OptimisationStep(encoder, adamw(param_groups(encoder, cfg.optim.weight_decay), cfg.optim), cfg.optim,
                                    cfg.run, device)

    def plain_loss(model) -> dict:
        return {"loss": model.hypercolumn(model(x, run_decoder=False)).float().square().mean()}

    base_times = _time_steps(lambda step: encoder_step(step, plain_loss), steps, warmup, device)
    recipe_s, base_s = statistics.median(recipe_times), statistics.median(base_times)
    return {
        "recipe": name,
        "size": cfg.encoder["size"],
        "precision": "bf16" if device.type == "cuda" and precision == "bf16" else "fp32",
        "batch_scans": len(scans),
        "step_ms_median": 1000 * recipe_s,
        "scans_per_s": len(scans) / recipe_s,
        "encoder_step_ms_median": 1000 * base_s,
        "largest_view_voxels": int(largest.feat.shape[0]),
        "ratio_vs_encoder_step": recipe_s / base_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["sonata", "msm", "jepa", "mae", "acl"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per recipe (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="scans per step (as run.batch_size)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast on CUDA, as ssl3d-pretrain")
    parser.add_argument("--size", default=None, help="encoder size preset instead of the configs' (nano)")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="time on the first --batch scans of PATH (a scan folder, file or bag) instead of simulated "
                             "scans, e.g. a study's data with --recipes sonata-sequences")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.data:
        source = open_source(args.data)
        scans = [source[i] for i in range(min(args.batch, len(source)))]
    else:
        scans = list(simulate_sequence(None, args.batch, seed=0))
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(scans)} {args.data or 'simulated'} scans per step "
          f"({', '.join(str(len(s)) for s in scans)} points), median of {args.steps} steps")
    print(f"{'recipe':8s} {'step ms':>9s} {'scans/s':>8s} {'encoder step ms':>16s} {'ratio':>6s}")
    results = []
    for name in args.recipes:
        r = bench_recipe(name, scans, args.steps, args.warmup, device, args.precision, args.size)
        results.append(r)
        print(f"{name:8s} {r['step_ms_median']:9.0f} {r['scans_per_s']:8.2f} {r['encoder_step_ms_median']:16.0f} "
              f"{r['ratio_vs_encoder_step']:6.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
