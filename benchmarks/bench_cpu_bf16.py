"""bf16 inference on CPU against fp32, per frame, on the node's pipeline (issue 30's "bf16 where the CPU
supports it, with the accuracy loss measured").

The node runs fp32 on CPU (``precision: bf16`` falls back to fp32 there). This measures what it would
gain: the packaged checkpoint's pipeline twice in one process, once as the node runs it and once with
the encoder in bfloat16 (what ``precision: bf16`` means on CUDA), frames alternating between the two
(the order swapped every round, so a machine that speeds up or slows down affects both alike). Printed
per scan: the median frame time of each and their ratio, the stages, and the share of points whose
class is the same in both. Run where the CPU has native bf16 (AVX512-BF16 or AMX: printed first);
without it bf16 matmuls are emulated and slower.

    .venv/bin/python benchmarks/bench_cpu_bf16.py --threads 1 --rounds 12
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_node import load_scan  # benchmarks/ is this script's folder, on sys.path

from ssl3d_ros.perception import PerceptionPipeline


def native_bf16() -> dict[str, bool]:
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx": "_is_amx_tile_supported"}
    return {name: bool(getattr(torch.cpu, fn, lambda: False)()) for name, fn in probes.items()}


def pipelines() -> dict[str, PerceptionPipeline]:
    fp32 = PerceptionPipeline.from_checkpoint(None, "cpu", "fp32")
    bf16 = PerceptionPipeline.from_checkpoint(None, "cpu", "fp32")
    bf16.encoder.to(torch.bfloat16)
    bf16.dtype = torch.bfloat16  # the pipeline casts each frame's features to this
    return {"fp32": fp32, "bf16": bf16}


def measure(pipes: dict[str, PerceptionPipeline], msg, rounds: int, warmup: int) -> dict:
    times: dict[str, list[float]] = {k: [] for k in pipes}
    stages: dict[str, list[dict]] = {k: [] for k in pipes}
    classes = {}
    for r in range(rounds + warmup):
        for name in (list(pipes) if r % 2 else list(pipes)[::-1]):
            t0 = time.perf_counter()
            cloud = pipes[name].process_cloud(msg, segmentation=True, embeddings=True)
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
                stages[name].append(cloud.result.timings_ms)
            classes[name] = np.asarray(cloud.result.class_id)
    medians = {k: round(float(np.median(v)), 1) for k, v in times.items()}
    return {
        "frame_ms_median": medians,
        "bf16_over_fp32": round(medians["bf16"] / medians["fp32"], 3),
        "stage_ms_median": {k: {s: round(float(np.median([t[s] for t in v])), 1) for s in v[0]} for k, v in stages.items()},
        "same_class_share": round(float((classes["fp32"] == classes["bf16"]).mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", nargs="+", default=["os2-32", "hdl32", "hdl64"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=12, help="frames of each precision per scan")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not measured")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"native_bf16": native_bf16(), "threads": args.threads, "rounds": args.rounds, "scans": {}}
    print(f"native bf16: {result['native_bf16']}  threads {args.threads}")
    pipes = pipelines()
    for name in args.scans:
        msg, description = load_scan(name)
        r = measure(pipes, msg, args.rounds, args.warmup)
        result["scans"][name] = {"description": description, **r}
        print(f"{name:8s} fp32 {r['frame_ms_median']['fp32']} ms  bf16 {r['frame_ms_median']['bf16']} ms  "
              f"ratio {r['bf16_over_fp32']}  same class {100 * r['same_class_share']:.2f} %  ({description})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
