#!/usr/bin/env python3
"""Work and memory of one huge frame against a normal one, with the node's shipped configuration.

Each case runs in a fresh process (so peak RSS is that frame's alone): load the packaged checkpoint
with ``config/perception.yaml``, warm up, then decode, infer and encode every output of one cloud
(``PerceptionPipeline.process_cloud`` + ``outputs.encode_outputs``, the node's frame path without DDS).
The normal frame is the real KITTI HDL-64 scan from ../shared/data (a synthetic 120k-point ring
without it); the huge one is that scan repeated with jitter up to ``--huge`` points (default 4 M,
the largest cloud ``input.max_points`` accepts). Reported: time for the frame, peak RSS, RSS after,
and the ratios huge / normal measured in the same run.

    .venv/bin/python benchmarks/bench_large_frame.py --huge 4000000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSL3D_SHARED_DATA", REPO.parent / "shared" / "data"))


def base_scan() -> tuple[np.ndarray, np.ndarray]:
    kitti = SHARED_DATA / "lidar" / "kitti" / "004139.bin"
    if kitti.is_file():
        raw = np.fromfile(kitti, dtype=np.float32).reshape(-1, 4)
        return raw[:, :3], raw[:, 3]
    rng = np.random.default_rng(0)
    r, a = rng.uniform(3, 50, 120_000), rng.uniform(0, 2 * np.pi, 120_000)
    xyz = np.stack([r * np.cos(a), r * np.sin(a), rng.uniform(-1.7, 2.0, 120_000)], 1).astype(np.float32)
    return xyz, rng.uniform(0, 1, 120_000).astype(np.float32)


def one_frame(points: int) -> dict:
    """Runs in the child process."""
    from ssl3d_ros.codec import FieldSpec, encode_cloud, fill_cloud_message
    from ssl3d_ros.perception import (OutputEncoder, OutputSelection, PerceptionPipeline, encode_outputs, load_node_config,
                                      rss_bytes)

    xyz, intensity = base_scan()
    if points > len(xyz):
        reps = -(-points // len(xyz))
        rng = np.random.default_rng(1)
        xyz = (np.tile(xyz, (reps, 1)) + rng.normal(0, 0.05, (reps * len(xyz), 3)).astype(np.float32))[:points]
        intensity = np.tile(intensity, reps)[:points]
    msg = fill_cloud_message(SimpleNamespace(), encode_cloud(xyz, {"intensity": intensity}),
                             lambda **kw: FieldSpec(**kw))
    del xyz, intensity
    cfg = load_node_config(REPO / "config" / "perception.yaml")
    cfg.device = "cpu"
    pipeline = PerceptionPipeline.from_config(cfg)
    pipeline.warm_up()
    encoder = OutputEncoder.for_classes(pipeline.class_names, pipeline.class_colors, cfg)
    rss_before = rss_bytes()
    t0 = time.perf_counter()
    cloud = pipeline.process_cloud(msg, point_embeddings=not cfg.embeddings.per_voxel)
    sizes = {name: len(getattr(payload, "data", b"")) for name, payload, _ in encode_outputs(cloud, OutputSelection(), encoder)}
    elapsed = time.perf_counter() - t0
    return {
        "points": points, "voxels": len(cloud.result.voxel_coord),
        "points_over_budget": cloud.result.points_over_budget, "frame_s": elapsed,
        "rss_before_mb": rss_before / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_mb": rss_bytes() / 2**20, "output_mb": {k: v / 1e6 for k, v in sizes.items()},
        "voxel_budget": pipeline.preprocess_cfg.max_points, "embedding_dims": pipeline.embedding_channels,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--huge", type=int, default=4_000_000, help="points of the huge cloud")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_frame(args.child)))
        return 0
    normal_points = len(base_scan()[0])
    results = {}
    for name, n in (("normal", normal_points), ("huge", args.huge)):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:6s} {r['points']:>9d} points -> {r['voxels']} voxels (budget {r['voxel_budget']}, "
              f"{r['points_over_budget']} points over it): frame {r['frame_s'] * 1e3:.0f} ms, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB (before the frame {r['rss_before_mb']:.0f}, after {r['rss_after_mb']:.0f}); "
              f"outputs MB {r['output_mb']}")
    n, h = results["normal"], results["huge"]
    print(f"huge / normal: time x{h['frame_s'] / n['frame_s']:.1f}, peak RSS x{h['peak_rss_mb'] / n['peak_rss_mb']:.2f}, "
          f"RSS after x{h['rss_after_mb'] / n['rss_after_mb']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
