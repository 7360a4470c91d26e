"""Device script sections on training: pretraining steps per recipe and size, the DataLoader's view
rate beside them, a ``torchrun --nproc-per-node 1`` run that stops and resumes, and fine-tuning."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from seam import data_folder, time_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["sonata", "msm", "jepa", "mae", "acl"]
#: the real scans the pretraining measurements read (folders under the data folder)
SCAN_FOLDERS = ["lidar/kitti", "lidar/ouster", "lidar/nuscenes"]


def scan_sources() -> list[str]:
    return [str(data_folder() / f) for f in SCAN_FOLDERS if (data_folder() / f).is_dir()]


def load_scans(count: int, max_points: int | None):
    """The first ``count`` real scans of the sources (each cut to ``max_points`` for the rehearsal)."""
    from ssl3d_ros.io.readers import open_source

    scans = []
    for spec in scan_sources():
        source = open_source(spec)
        for i in range(len(source)):
            if len(scans) == count:
                return scans
            scan = source[i]
            scans.append(scan if max_points is None else scan.select(np.arange(min(len(scan), max_points))))
    if not scans:
        raise FileNotFoundError(f"no scans under {data_folder()} ({', '.join(SCAN_FOLDERS)})")
    return scans


def loader_rate(recipe_name: str, workers: int, batches: int) -> float:
    """Scans per second the DataLoader makes views at (crops, augmentation, voxelization) with
    ``workers`` processes, the first batch (worker start) excluded."""
    from ssl3d_ros.training.config import load_config
    from ssl3d_ros.training.data import PretrainDataset, StepSampler, make_loader, open_data
    from ssl3d_ros.training.loop import build_recipe

    cfg = load_config(REPO / "config" / "pretrain" / f"{recipe_name}.yaml")
    cfg.data.sources = scan_sources()
    recipe = build_recipe(cfg)
    dataset = PretrainDataset(open_data(cfg.data), recipe.view_maker(), cfg.data, 0)
    loader = make_loader(dataset, StepSampler(cfg.run.batch_size, batches + 1), workers, pin_memory=False)
    started, scans = None, 0
    for i, batch in enumerate(loader):
        if i == 0:
            started = time.perf_counter()
            continue
        scans += batch.num_scans
    return scans / (time.perf_counter() - started)


def torchrun_resume(ctx) -> dict:
    """Two ``torchrun --nproc-per-node 1`` runs of ssl3d-pretrain: 2 steps, then resumed to 4."""
    out = ctx.work / "torchrun"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
            "-m", "ssl3d_ros.training.pretrain", "--config", str(REPO / "config" / "pretrain" / "mae.yaml"),
            "--data", *scan_sources(), "--batch-size", "2", "--workers", "1", "--checkpoint-every", "1",
            "--out", str(out), "--device", ctx.device, "--no-progress", "--set", "run.tensorboard=false"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_DEBUG="INFO", OMP_NUM_THREADS="1")
    result: dict = {"backend": "nccl" if ctx.cuda else "gloo"}
    for name, extra in (("first", ["--steps", "2"]), ("resumed", ["--steps", "4", "--resume"])):
        started = time.monotonic()
        proc = subprocess.run(base + extra, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=max(10.0, ctx.left()))
        result[f"{name}_exit"] = proc.returncode
        result[f"{name}_s"] = round(time.monotonic() - started, 1)
        result[f"{name}_nccl_info_lines"] = proc.stdout.count("NCCL INFO") + proc.stderr.count("NCCL INFO")
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun {name} run exited with {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    if ctx.cuda and not result["resumed_nccl_info_lines"]:
        raise RuntimeError("torchrun on CUDA printed no NCCL INFO line (NCCL_DEBUG=INFO): NCCL was not used")
    from ssl3d_ros.training import state as state_io

    latest = state_io.load_latest(out / "checkpoints")
    result["resumed_to_step"] = latest.step if latest else None
    result["encoder_written"] = (out / "encoder.safetensors").exists()
    if result["resumed_to_step"] != 4 or not result["encoder_written"]:
        raise RuntimeError(f"the resumed run ended at step {result['resumed_to_step']}, encoder written: "
                           f"{result['encoder_written']}")
    return result


def section_training(ctx) -> dict:
    import torch

    device = torch.device(ctx.device)
    precision = "bf16" if ctx.cuda else "fp32"
    sizes = ["nano"] if ctx.small else ["nano", "small"]
    steps, warmup = (1, 1) if ctx.small else (5, 2)
    scans = load_scans(2, 6000 if ctx.small else None)
    if not ctx.cuda:
        torch.set_num_threads(1)
    workers = 1 if ctx.small else max(1, min(8, (os.cpu_count() or 2) - 2))
    result: dict = {"precision": precision, "scans_per_step": len(scans), "loader_workers": workers, "rows": [],
                    "not_run_for_time": []}
    # the torchrun smoke run first: it is the one thing here that only a GPU machine can show
    result["torchrun"] = torchrun_resume(ctx)
    ctx.log(f"  torchrun --nproc-per-node 1 ({result['torchrun']['backend']}): 2 steps, resumed to step "
            f"{result['torchrun']['resumed_to_step']}; NCCL INFO lines {result['torchrun']['resumed_nccl_info_lines']}")
    ctx.log(f"  {'recipe':7s} {'size':5s} {'step ms':>8s} {'scans/s':>8s} {'enc step ms':>11s} {'ratio':>6s} "
            f"{'loader scans/s':>14s} keeps up")
    loader_by_recipe: dict[str, float] = {}
    last_s = 0.0
    for size in sizes:
        for name in RECIPES:
            if ctx.left() < 1.5 * last_s + 2:
                result["not_run_for_time"].append(f"{name}/{size}")
                continue
            started = time.monotonic()
            r = time_recipe(name, scans, steps, warmup, device, precision=precision, size=size)
            if name not in loader_by_recipe and not (ctx.small and loader_by_recipe):  # rehearsal: one recipe
                loader_by_recipe[name] = loader_rate(name, workers, 1 if ctx.small else 4)
            r["loader_scans_per_s"] = loader_by_recipe.get(name, next(iter(loader_by_recipe.values())))
            r["loader_keeps_up"] = r["loader_scans_per_s"] >= r["scans_per_s"]
            result["rows"].append(r)
            ctx.log(f"  {name:7s} {size:5s} {r['step_ms_median']:8.1f} {r['scans_per_s']:8.2f} "
                    f"{r['encoder_step_ms_median']:11.1f} {r['ratio_vs_encoder_step']:6.2f} "
                    f"{r['loader_scans_per_s']:14.2f} {'yes' if r['loader_keeps_up'] else 'NO'}")
            last_s = time.monotonic() - started
            if ctx.cuda:
                torch.cuda.empty_cache()
    if result["not_run_for_time"]:
        ctx.notes.append(f"training: {result['not_run_for_time']} not run (section budget spent)")
    return result


def section_finetune(ctx) -> dict:
    """Fine-tuning throughput: benchmarks/bench_finetune.py on this device (bf16 autocast on CUDA),
    its own process so that a failure stays in this section."""
    out = ctx.work / "finetune.json"
    steps, warmup = (2, 1) if ctx.small else (10, 3)
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_finetune.py"), "--device", ctx.device,
           "--steps", str(steps), "--warmup", str(warmup), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(ctx.left(), 5))
    for line in proc.stdout.splitlines():
        ctx.log(f"  {line}")
    if proc.returncode != 0:
        raise RuntimeError(f"bench_finetune.py exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())


SECTIONS = {"training": section_training, "finetune": section_finetune}
