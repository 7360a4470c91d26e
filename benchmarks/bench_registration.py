#!/usr/bin/env python3
"""Registration cost per temporal pair: what a DataLoader worker pays the first time it meets a pair
of consecutive real frames (``training.registration.register``: voxelize both scans twice, normals,
coarse + fine point-to-plane ICP, fitness), next to an in-run baseline, the voxelization and normals
alone (``registration_cloud`` of both scans at both grids), and the cost of a cache hit (one JSON
read). Medians of ``--repeats`` runs after one warm-up, per pair of ``../shared/data``'s consecutive
frames; ``--threads`` caps Open3D's OpenMP threads (a worker has one core).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_registration.py --repeats 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(os.environ.get("SSL3D_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAIRS = [
    ("kitti_seq00/000001.bin", "kitti_seq00/000002.bin"),
    ("kitti_raw_0002/0000000000.bin", "kitti_raw_0002/0000000001.bin"),
    ("ouster/OS-1-128_v2.3.0_1024x10_lb_n3_frame00.xyzi.bin", "ouster/OS-1-128_v2.3.0_1024x10_lb_n3_frame01.xyzi.bin"),
    ("libpointmatcher/cloud.00000.xyz.npy", "libpointmatcher/cloud.00001.xyz.npy"),
]


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads (set before Open3D loads)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from ssl3d_ros.io import open_source
    from ssl3d_ros.training.registration import PairCache, RegistrationConfig, cached_register, register, registration_cloud

    lidar = SHARED_DATA / "lidar"
    if not lidar.is_dir():
        raise SystemExit(f"bench_registration: no real data at {SHARED_DATA} (see its README)")
    cfg = RegistrationConfig()
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {args.repeats} repeats, {cfg}")
    print("| pair | points | register ms | voxelize + normals ms (baseline) | ratio | cache hit ms | fitness | rmse m |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cache = PairCache(tmp)
        for fixed_name, moving_name in PAIRS:
            fixed, moving = (open_source(lidar / name)[0].points for name in (fixed_name, moving_name))

            def baseline():
                for scale in (3.0, 1.0):
                    registration_cloud(moving, cfg.voxel_size * scale, cfg.min_range)
                    registration_cloud(fixed, cfg.voxel_size * scale, cfg.min_range)

            full = median_ms(lambda: register(moving, fixed, cfg), args.repeats)
            base = median_ms(baseline, args.repeats)
            hit = median_ms(lambda: cached_register(cache, moving_name, fixed_name, moving, fixed, cfg), args.repeats)
            result = register(moving, fixed, cfg)
            print(f"| {moving_name} -> {Path(fixed_name).name} | {len(moving):,} | {full:.0f} | {base:.0f} | "
                  f"{full / base:.2f} | {hit:.2f} | {result.fitness:.2f} | {result.rmse:.3f} |")


if __name__ == "__main__":
    main()
