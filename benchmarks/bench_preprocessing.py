#!/usr/bin/env python3
"""Preprocessing speed per frame: crop + voxelize + features (inference and training), collate, unpool.

The node runs ``preprocess`` once per incoming cloud (about 120k points for a 64-beam LiDAR); the
target is a few milliseconds on one CPU core-pair. Uses the real KITTI scan from ../shared/data when
present, else a synthetic cloud of the same size. Median of ``--repeats`` runs after one warm-up.

    .venv/bin/python benchmarks/bench_preprocessing.py --voxel 0.05 --repeats 20
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ssl3d_ros.preprocessing import PreprocessConfig, batch_point_voxel, collate, preprocess, unpool
from ssl3d_ros.scan import Scan

SHARED_DATA = Path(os.environ.get("SSL3D_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load_scan(points: int) -> Scan:
    kitti = SHARED_DATA / "lidar" / "kitti" / "004139.bin"
    if kitti.is_file() and points <= 0:
        raw = np.fromfile(kitti, dtype=np.float32).reshape(-1, 4)
        return Scan(points=raw[:, :3], fields={"intensity": raw[:, 3]}, intensity_scale=1.0, source=str(kitti))
    rng = np.random.default_rng(0)
    n = points if points > 0 else 120_000
    xyz = rng.normal(0, 20, size=(n, 3)).astype(np.float32)
    xyz[:, 2] *= 0.1
    xyz[rng.random(n) < 0.02] = np.nan
    return Scan(points=xyz, fields={"intensity": rng.random(n, dtype=np.float32)}, source=f"synthetic {n}")


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds per call. On a shared machine the CPU time (with
    ``--threads 1``) is the steadier number; wall time is what a node on an idle robot sees."""
    fn()
    wall, cpu = [], []
    gc.disable()
    try:
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    finally:
        gc.enable()
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=0, help="synthetic cloud size (0: the real KITTI scan)")
    parser.add_argument("--voxel", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--hypercolumn", type=int, default=96, help="channels unpooled per point")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scan = load_scan(args.points)
    base = PreprocessConfig(voxel_size=args.voxel, features=("xyz", "intensity"), coord_scale=50.0)
    rich = PreprocessConfig(voxel_size=args.voxel, features=("xyz", "height", "intensity", "range"), coord_scale=50.0)
    normals = PreprocessConfig(voxel_size=args.voxel, features=("xyz", "intensity", "normal"), coord_scale=50.0)
    gen = torch.Generator().manual_seed(0)

    vox = preprocess(scan, base)
    print(f"{scan.source}: {len(scan)} points -> {len(vox)} voxels at {args.voxel} m, "
          f"torch threads {torch.get_num_threads()}")
    rows = [
        ("preprocess inference xyz+intensity", lambda: preprocess(scan, base)),
        ("preprocess inference xyz+height+intensity+range", lambda: preprocess(scan, rich)),
        ("preprocess training (random point per voxel)", lambda: preprocess(scan, base, training=True, generator=gen)),
        ("preprocess inference + estimated normals", lambda: preprocess(scan, normals)),
    ]
    hyper = torch.randn(len(vox), args.hypercolumn)
    rows += [
        ("collate (1 scan)", lambda: collate([vox])),
        (f"unpool {args.hypercolumn} channels", lambda: unpool(hyper, vox.point_voxel)),
        ("collate + batch_point_voxel (4 scans)", lambda: (collate([vox] * 4), batch_point_voxel([vox] * 4))),
    ]
    print(f"  {'':<52s} {'wall ms':>9s} {'cpu ms':>9s}")
    for name, fn in rows:
        wall, cpu = timed(fn, args.repeats)
        print(f"  {name:<52s} {wall:9.2f} {cpu:9.2f}")


if __name__ == "__main__":
    main()
