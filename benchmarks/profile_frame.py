"""Where one frame's time goes: the node's pipeline and output encoders, in this process, no ROS.

Runs ``PerceptionPipeline.process_cloud`` (every output's inputs: segmentation and embeddings) and
``encode_outputs`` with every output selected, on one benchmark scan, ``--frames`` times after a
warm-up; prints the median of each stage (decode, preprocess, inference, postprocess, and each
output's encoding) and, under torch's profiler, the operators with the most self CPU time per frame.
This is the "profile" of BENCHMARKS.md's node sections; speed claims still come from bench_node.py
and bench_encoder.py (medians against an in-run baseline).

    scripts/netns-run .venv/bin/python benchmarks/profile_frame.py --scan hdl64 --threads 2 --frames 10
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_node import benchmark_checkpoint, load_scan

STAGES = ("decode", "preprocess", "inference", "postprocess")


def frame_stages(pipeline, encoder, selection, msg, point_embeddings: bool) -> dict[str, float]:
    """One frame's stage times (ms): the pipeline's own and each output's encoding. ``point_embeddings``
    as the node passes it (not ``embeddings.per_voxel``): per-point embeddings are a frame's largest
    array, and unpooling them is most of the postprocess stage."""
    from ssl3d_ros.perception import encode_outputs

    start = time.perf_counter()
    cloud = pipeline.process_cloud(msg, segmentation=True, embeddings=True, point_embeddings=point_embeddings)
    total = (time.perf_counter() - start) * 1e3
    stages = {"decode": cloud.decode_ms, **{k: v for k, v in cloud.result.timings_ms.items() if k in STAGES}}
    stages["pipeline total"] = total
    for name, _payload, ms in encode_outputs(cloud, selection, encoder):
        stages[f"encode {name}"] = ms
    return stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", default="hdl64", help="hdl64, os2-128, os2-32 or hdl32 (bench_node.py's scans)")
    ap.add_argument("--checkpoint", default=None, help="default: the packaged checkpoint")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the node's cpu_threads on this machine)")
    ap.add_argument("--frames", type=int, default=10, help="profiled frames, after --warmup frames")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=15, help="operators listed")
    ap.add_argument("--point-embeddings", action="store_true",
                    help="one embedding per input point (embeddings.per_voxel: false); default: the node's default, per voxel")
    ap.add_argument("--json", type=Path, default=None, help="also write the stage medians and operators here")
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from ssl3d_ros.perception import NodeConfig, OutputEncoder, OutputSelection, PerceptionPipeline

    torch.set_num_threads(args.threads)
    msg, description = load_scan(args.scan)
    with tempfile.TemporaryDirectory() as work:
        checkpoint = benchmark_checkpoint(args.checkpoint, Path(work))
        cfg = NodeConfig(checkpoint=str(checkpoint), device="cpu")
        pipeline = PerceptionPipeline.from_config(cfg)
    pipeline.warm_up()
    encoder = OutputEncoder.for_classes(pipeline.class_names, pipeline.class_colors, cfg)
    selection = OutputSelection(segmentation=True, embeddings=True, visualization=True, occupancy=True, obstacles=True)
    point_embeddings = not cfg.embeddings.per_voxel  # the node's default unless --point-embeddings
    if args.point_embeddings:
        point_embeddings = True
        encoder = dataclasses.replace(encoder, embeddings_per_voxel=False)
    for _ in range(args.warmup):
        frame_stages(pipeline, encoder, selection, msg, point_embeddings)
    rows: list[dict[str, float]] = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.frames):
            rows.append(frame_stages(pipeline, encoder, selection, msg, point_embeddings))
    medians = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    operators = [{"op": e.key, "self_ms_per_frame": round(e.self_cpu_time_total / 1e3 / args.frames, 2),
                  "calls_per_frame": round(e.count / args.frames, 1)} for e in ops]

    print(f"{description}, {msg.width * msg.height} points, torch threads {args.threads}, "
          f"{args.frames} frames, embeddings {'per point' if point_embeddings else 'per voxel'} "
          "(profiler on: its overhead is in these times)")
    print("stage medians (ms): " + ", ".join(f"{k} {v}" for k, v in medians.items()))
    print(f"{'operator':40s} {'self ms/frame':>14s} {'calls/frame':>12s}")
    for o in operators:
        print(f"{o['op'][:40]:40s} {o['self_ms_per_frame']:14.2f} {o['calls_per_frame']:12.1f}")
    if args.json:
        args.json.write_text(json.dumps({"scan": description, "threads": args.threads, "frames": args.frames,
                                         "point_embeddings": point_embeddings,
                                         "stage_ms_median": medians, "operators": operators}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
