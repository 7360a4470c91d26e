"""Fine-tuning throughput (scans/s), against a forward-only pass of the same model measured in the same run.

Builds the model exactly as ``ssl3d-finetune`` does from ``--init`` (default: the packaged
checkpoint, its preprocessing), makes labelled views of simulated scans with the default
augmentations, and times ``ssl3d-finetune``'s own step (``training.finetune.loop.FinetuneStep``: the
batch to the device, learning-rate schedule, forward, loss on the labelled points, backward, gradient
clipping, layer-wise AdamW step): frozen-encoder warm-up steps (head only) first, then full steps.
View making is timed apart: the DataLoader workers do it in parallel. Baseline: the model's forward
pass on the same batch without gradients (what inference costs); the ratio says how many forward
passes a step costs.

    python benchmarks/bench_finetune.py --steps 8 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ssl3d_ros.config import set_dotted
from ssl3d_ros.io import open_source
from ssl3d_ros.labels import load_class_map
from ssl3d_ros.sim import simulate_sequence
from ssl3d_ros.training.data import Sample
from ssl3d_ros.training.finetune.config import config_from_dict
from ssl3d_ros.training.finetune.data import collate_labelled, labelled_view
from ssl3d_ros.training.finetune.loop import FinetuneStep, finetune_optimizer
from ssl3d_ros.training.finetune.model import SegmentationModel
from ssl3d_ros.training.finetune.prepare import initial_encoder
from ssl3d_ros.training.finetune.labels import class_indices


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default=None, help="checkpoint to fine-tune (default: the packaged one)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="scans per step (run.batch_size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="labelled scans to time on (the first --batch of PATH) instead of simulated ones")
    parser.add_argument("--class-map", default="sim-outdoor", help="class map of --data (labels.class_map)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                        help="fine-tuning config override, as ssl3d-finetune/ssl3d-study take it "
                             "(e.g. augment.crop=ball, augment.crop_points=20000: the study's crops)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from ssl3d_ros.checkpoint import packaged_checkpoint

    init = args.init or str(packaged_checkpoint())
    # steps [0, warm-up + steps) are the frozen warm-up, the next as many train the whole model
    timed_steps = args.warmup + args.steps
    cfg_dict = {"init": init, "optim": {"freeze_encoder_steps": timed_steps}, "run": {"steps": 2 * timed_steps}}
    for assignment in args.overrides:
        set_dotted(cfg_dict, assignment)
    cfg = config_from_dict(cfg_dict)
    torch.manual_seed(0)
    start = initial_encoder(cfg, device)
    cmap = load_class_map(args.class_map)
    model = SegmentationModel(start.encoder, cmap.num_classes).to(device).train()
    step = FinetuneStep(cfg, model, finetune_optimizer(cfg, model), None, device)

    if args.data:
        source = open_source(args.data)
        scans = [source[i] for i in range(min(args.batch, len(source)))]
    else:
        scans = list(simulate_sequence(None, args.batch, seed=0))
    for scan in scans:
        scan.labels = class_indices(scan.labels, cmap).astype(np.int32)
    rng = np.random.default_rng(0)
    view_times, views = [], []
    for scan in scans:
        t0 = time.perf_counter()
        views.append(labelled_view(scan, cfg.augment, start.preprocessing, rng))
        view_times.append(time.perf_counter() - t0)
    batch = collate_labelled([Sample(v, []) for v in views])  # on the CPU, as the DataLoader gives it
    x = batch.to(device).voxels.sparse()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = iter(range(2 * timed_steps))

    def train_step() -> None:
        step(next(steps), batch)
        sync()

    @torch.no_grad()
    def forward() -> None:
        with step.optimisation.autocast():
            model(x)
        sync()

    frozen = statistics.median(timed(train_step, args.steps, args.warmup))
    full = statistics.median(timed(train_step, args.steps, args.warmup))
    base = statistics.median(timed(forward, args.steps, args.warmup))
    result = {
        "init": init, "device": str(device), "threads": torch.get_num_threads(), "batch_scans": len(scans),
        "points_per_scan": [len(s) for s in scans], "voxels": len(batch.voxels),
        "labelled_points": int(len(batch.label_class)), "voxel_size": start.preprocessing.voxel_size,
        "step_ms_median": 1000 * full, "scans_per_s": len(scans) / full,
        "frozen_step_ms_median": 1000 * frozen, "frozen_scans_per_s": len(scans) / frozen,
        "forward_ms_median": 1000 * base, "ratio_vs_forward": full / base, "frozen_ratio_vs_forward": frozen / base,
        "view_ms_median": 1000 * statistics.median(view_times),
    }
    print(f"device {device}, torch threads {result['threads']}, init {init}, {len(scans)} {args.data or 'simulated'} scans per step "
          f"({', '.join(map(str, result['points_per_scan']))} points, {result['voxels']} voxels at "
          f"{result['voxel_size']} m), median of {args.steps} steps")
    print(f"{'step':26s} {'ms':>8s} {'scans/s':>8s} {'x forward':>10s}")
    print(f"{'fine-tune (end to end)':26s} {result['step_ms_median']:8.0f} {result['scans_per_s']:8.2f} {result['ratio_vs_forward']:10.2f}")
    print(f"{'frozen-encoder warm-up':26s} {result['frozen_step_ms_median']:8.0f} {result['frozen_scans_per_s']:8.2f} "
          f"{result['frozen_ratio_vs_forward']:10.2f}")
    print(f"{'forward only (baseline)':26s} {result['forward_ms_median']:8.0f} {len(scans) / base:8.2f} {1.0:10.2f}")
    print(f"view making (per scan, in DataLoader workers): {result['view_ms_median']:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
