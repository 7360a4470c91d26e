#!/usr/bin/env python3
"""What a novelty reference costs per frame: the node's frame path on real HDL-64 scans with the
shipped configuration, the novelty score timed on its own and against the frame's inference.

The packaged checkpoint with ``config/perception.yaml`` (segmentation + 32-D per-voxel embeddings, the
0.15 m voxel budget) gets a novelty reference (``ssl3d-novelty-ref``'s fit: 32 prototypes in 16 dims by
default, ``--prototypes``, ``--dims``) fitted on ``--reference-scans`` SemanticKITTI sequence scans (the
simulator's streets without ../shared/data; the cost depends on the reference's sizes, not on what it
describes). Then every KITTI odometry scan of ../shared/data (HDL-64, ~124k points) goes through
``PerceptionPipeline.process_cloud`` ``--repeats`` times, alternately with novelty off and on (frame
score only, then with the per-point field too). Reported medians: the novelty score itself
(``timings_ms["novelty"]``, inside inference), the inference without it in the same run, their ratio,
and the whole frame's time with and without novelty.

    .venv/bin/python benchmarks/bench_novelty.py --repeats 10 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSL3D_SHARED_DATA", REPO.parent / "shared" / "data"))


def hdl64_messages() -> list:
    """Real KITTI HDL-64 scans as PointCloud2-like messages (x, y, z, intensity)."""
    from ssl3d_ros.codec import FieldSpec, encode_cloud, fill_cloud_message

    files = sorted((SHARED_DATA / "lidar" / "kitti_seq00").glob("*.bin"))
    if not files:
        sys.exit(f"no HDL-64 scans in {SHARED_DATA / 'lidar' / 'kitti_seq00'} (set SSL3D_SHARED_DATA)")
    messages = []
    for path in files:
        raw = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
        messages.append(fill_cloud_message(SimpleNamespace(), encode_cloud(raw[:, :3], {"intensity": raw[:, 3]}),
                                           lambda **kw: FieldSpec(**kw)))
    return messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="passes over the scans (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (node parameter cpu_threads; default 1)")
    parser.add_argument("--reference-scans", type=int, default=8, help="scans the reference is fitted on (default 8)")
    parser.add_argument("--dims", type=int, help="reference subspace dims (default: ssl3d-novelty-ref's)")
    parser.add_argument("--prototypes", type=int, help="reference prototypes (default: ssl3d-novelty-ref's)")
    args = parser.parse_args()

    import torch

    from ssl3d_ros.checkpoint import packaged_checkpoint
    from ssl3d_ros.io import open_source
    from ssl3d_ros.perception import PerceptionPipeline, apply_process_settings, load_node_config
    from ssl3d_ros.training.data import DataConfig, open_data
    from ssl3d_ros.training.novelty import add_novelty_reference, reference_scans

    cfg = load_node_config(REPO / "config" / "perception.yaml")
    cfg.device, cfg.cpu_threads = "cpu", args.threads
    apply_process_settings(cfg.cpu_threads, cfg.retain_freed_memory)
    sequences = SHARED_DATA / "lidar" / "semantickitti_sequences"
    source = open_source(str(sequences)) if sequences.is_dir() else open_data(DataConfig(sources=["sim:outdoor:8"]))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "with_reference.safetensors"
        t = time.perf_counter()
        reference = add_novelty_reference(packaged_checkpoint(), checkpoint, reference_scans(source, args.reference_scans),
                                          dims=args.dims, prototypes=args.prototypes)
        fit_s = time.perf_counter() - t
        cfg.checkpoint = str(checkpoint)
        pipeline = PerceptionPipeline.from_config(cfg)
    pipeline.warm_up()
    messages = hdl64_messages()
    runs = {"off": [], "frame": [], "per_point": []}
    for _ in range(args.repeats):
        for msg in messages:
            for mode in runs:  # interleaved: the machine's load changes alike for the three
                t = time.perf_counter()
                cloud = pipeline.process_cloud(msg, point_embeddings=not cfg.embeddings.per_voxel,
                                               novelty=mode != "off", point_novelty=mode == "per_point")
                total = (time.perf_counter() - t) * 1e3
                timings = cloud.result.timings_ms
                runs[mode].append({"total": total, "inference": timings["inference"],
                                   "novelty": timings.get("novelty", 0.0), "voxels": len(cloud.result.voxel_coord)})

    def median(mode: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[mode]]))

    inference_without = median("off", "inference")
    novelty = median("frame", "novelty")
    report = {
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s)",
        "load_average": os.getloadavg()[0],
        "frames": len(runs["frame"]), "points": int(messages[0].width), "voxels_median": median("frame", "voxels"),
        "reference": {"frames": reference.frames, "dims": reference.dims, "prototypes": reference.num_prototypes,
                      "fit_s": round(fit_s, 1)},
        "novelty_ms_median": novelty,
        "novelty_ms_p90": float(np.percentile([r["novelty"] for r in runs["frame"]], 90)),
        "novelty_per_point_ms_median": median("per_point", "novelty"),
        "inference_without_novelty_ms_median": inference_without,
        "novelty_over_inference": novelty / inference_without,
        "frame_ms_median": {mode: median(mode, "total") for mode in runs},
    }
    print(json.dumps(report, indent=2))
    print(f"novelty score: median {novelty:.2f} ms per HDL-64 frame ({report['novelty_ms_p90']:.2f} ms p90; "
          f"{report['novelty_per_point_ms_median']:.2f} ms with the per-point field), "
          f"{100 * report['novelty_over_inference']:.1f} % of the frame's inference ({inference_without:.0f} ms) in the same run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
