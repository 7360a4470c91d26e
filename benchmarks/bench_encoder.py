"""Encoder forward latency and peak memory on real scans, per size and sparse-conv backend.

    python benchmarks/bench_encoder.py                      # CPU (2 threads), then CUDA fp16 if available
    python benchmarks/bench_encoder.py --sizes nano --repeats 20 --threads 2
    python benchmarks/bench_encoder.py --device cuda --cuda-dtype fp16   # GPU only (spconv-cu12x if installed)
    python benchmarks/bench_encoder.py --sizes nano --backends torch --against ../main --rounds 6   # A/B

``--against CHECKOUT`` is an A/B on a shared machine: each configuration runs alternately (``--rounds``
times each, the order swapped every round) with the code of another checkout of this repository
(PYTHONPATH set to it; e.g. a worktree of main) and with this one, and prints the medians over all
their frames and the ratio this/against.

Every measurement runs in a fresh subprocess so that its peak RSS (CPU) or peak CUDA memory belongs to
that configuration alone. Each forward starts from a fresh SparseTensor, so kernel/downsample maps and
serializations are rebuilt every time, exactly as for a live scan. Voxel sizes: nano 0.15 m, the other
sizes 0.1 m (``--voxel`` overrides). ``ref16`` is the issue's yardstick: a plain 4-stage 16-channel
conv net (stem + per stage a stride-2 conv and two 3^3 submanifold convs) at 0.1 m.

Note: spconv 2.3.8's multi-threaded CPU forward races (results vary between runs; traveller59/spconv#679);
its timings are still meaningful, its outputs at threads > 1 are not.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SSL3D_SHARED_DATA", REPO.parent / "shared" / "data"))
SCANS = {
    "HDL-64 (KITTI 004139)": ("lidar/kitti/004139.bin", 1.0),
    "OS-2-128": ("lidar/ouster/OS-2-128-U1_v2.3.0_1024x10_frame00.xyzi.bin", 255.0),
    "OS-0-32": ("lidar/ouster/OS-0-32-U1_v2.2.0_1024x10_frame00.xyzi.bin", 255.0),
}
VOXEL = {"nano": 0.15, "micro": 0.1, "small": 0.1, "base": 0.1, "ref16": 0.1}


def voxelize(path: Path, intensity_scale: float, voxel: float):
    import torch

    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    pts = pts[np.isfinite(pts).all(1) & (np.abs(pts[:, :3]).sum(1) > 0)]
    grid, first = np.unique(np.floor(pts[:, :3] / voxel).astype(np.int32), axis=0, return_index=True)
    coords = np.concatenate([np.zeros((len(grid), 1), np.int32), grid], 1)
    feats = pts[first].copy()
    feats[:, :3] /= 50.0  # roughly unit scale
    feats[:, 3] /= intensity_scale
    return len(pts), torch.from_numpy(coords), torch.from_numpy(feats)


def build_model(size: str, backend: str):
    import torch
    from torch import nn

    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.models.sparse import SparseDownConv3d, SubMConv3d

    if size != "ref16":
        return SparseEncoder(EncoderConfig.preset(size, backend=backend))

    class Ref16(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = SubMConv3d(4, 16, 3, backend=backend)
            self.layers = nn.ModuleList()
            for _ in range(4):
                self.layers.append(SparseDownConv3d(16, 16, backend=backend))
                self.layers.append(SubMConv3d(16, 16, 3, backend=backend))
                self.layers.append(SubMConv3d(16, 16, 3, backend=backend))

        def infer(self, x, dtype=None):
            ctx = torch.autocast("cuda", dtype=dtype) if dtype and x.device.type == "cuda" else torch.no_grad()
            with torch.inference_mode(), ctx:
                x = self.stem(x)
                for layer in self.layers:
                    y = layer(x)
                    x = y.replace_feats(torch.relu(y.feats))
                return x

    return Ref16()


def run_single(args) -> dict:
    """One (scan, size, backend) measurement in this process."""
    import torch

    from ssl3d_ros.models.structure import SparseTensor

    torch.set_num_threads(args.threads)
    if args.heap == "retain":  # as the node does (parameter retain_freed_memory)
        from ssl3d_ros.perception import retain_freed_memory

        retain_freed_memory()
    torch.manual_seed(0)
    device = torch.device(args.device)
    path, scale = SCANS[args.scan]
    voxel = args.voxel or VOXEL[args.size]
    n_points, coords, feats = voxelize(DATA / path, scale, voxel)
    model = build_model(args.size, args.backend).to(device).eval()
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    coords, feats = coords.to(device), feats.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = []
    for i in range(args.warmup + args.repeats):
        x = SparseTensor(feats, coords, 1)  # fresh cache: maps are rebuilt as for a live scan
        sync()
        t0 = clock()
        model.infer(x, dtype=dtype)
        sync()
        if i >= args.warmup:
            times.append((clock() - t0) * 1e3)
    result = dict(scan=args.scan, size=args.size, backend=args.backend, device=args.device, dtype=args.dtype,
                  threads=args.threads, clock=args.clock, heap=args.heap, voxel=voxel, points=n_points, voxels=len(coords),
                  params=sum(p.numel() for p in model.parameters()),
                  median_ms=statistics.median(times), p90_ms=float(np.percentile(times, 90)), min_ms=min(times),
                  times_ms=times)
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure(args, scan: str, size: str, backend: str, device: str, dtype: str, code: Path | None = None) -> dict:
    """One configuration in a fresh subprocess; ``code``: import ssl3d_ros from that checkout instead."""
    cmd = [sys.executable, __file__, "--single", "--scan", scan, "--size", size, "--backend", backend,
           "--device", device, "--dtype", dtype, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--heap", args.heap, "--clock", args.clock]
    if args.voxel:
        cmd += ["--voxel", str(args.voxel)]
    env = None
    if code is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=code or REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"FAILED: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_ab(args, scan: str, size: str, backend: str, device: str, dtype: str) -> dict[str, dict]:
    """Alternate runs of ``args.against``'s code and this checkout's; pool each side's frames."""
    runs: dict[str, list[dict]] = {"against": [], "this": []}
    for r in range(args.rounds):
        sides = [("against", args.against.resolve()), ("this", REPO)]
        for label, code in sides if r % 2 == 0 else sides[::-1]:
            runs[label].append(measure(args, scan, size, backend, device, dtype, code))
    pooled = {}
    for label, rs in runs.items():
        times = [t for r in rs for t in r["times_ms"]]
        pooled[label] = {**rs[0], "median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
                         "min_ms": min(times), "times_ms": times, "code": label,
                         "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)}
    return pooled


def run_section(args, device: str, dtype: str) -> list[dict]:
    results = []
    print(f"\ndevice={device} dtype={dtype} threads={args.threads} repeats={args.repeats} heap={args.heap} clock={args.clock}"
          + (f" against={args.against} rounds={args.rounds}" if args.against else ""))
    header = f"{'scan':24s} {'size':6s} {'backend':7s} {'voxels':>7s} {'params':>9s} {'median ms':>10s} {'p90 ms':>8s} {'peak MiB':>9s}"
    print(header)
    for scan in args.scans.split(","):
        for size in args.sizes.split(","):
            row = {}
            for backend in args.backends.split(","):
                try:
                    if args.against:
                        pair = measure_ab(args, scan, size, backend, device, dtype)
                    else:
                        pair = {"": measure(args, scan, size, backend, device, dtype)}
                except RuntimeError as exc:
                    print(f"{scan:24s} {size:6s} {backend:7s} {exc}")
                    continue
                for label, r in pair.items():
                    results.append(r)
                    mem = r.get("peak_cuda_mib", r["peak_rss_mib"])
                    print(f"{scan:24s} {size:6s} {backend:7s} {r['voxels']:7d} {r['params']:9d} {r['median_ms']:10.1f} "
                          f"{r['p90_ms']:8.1f} {mem:9.0f} {label}", flush=True)
                if args.against:
                    this, base = pair["this"], pair["against"]
                    print(f"{'':24s} {size:6s} {backend:7s} this/against = {this['median_ms'] / base['median_ms']:.2f}x "
                          f"(medians), {this['min_ms'] / base['min_ms']:.2f}x (fastest frames: "
                          f"{this['min_ms']:.1f} / {base['min_ms']:.1f} ms)")
                row[backend] = pair.get("this", pair.get(""))
            if "torch" in row and "spconv" in row:
                print(f"{'':24s} {size:6s} torch/spconv = {row['torch']['median_ms'] / row['spconv']['median_ms']:.2f}x")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="nano,micro,small,base,ref16")
    ap.add_argument("--backends", default="torch,spconv")
    ap.add_argument("--scans", default=",".join(SCANS), help="comma-separated names of " + ", ".join(SCANS))
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu, then cuda when available)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help=argparse.SUPPRESS)
    ap.add_argument("--cuda-dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--heap", choices=["retain", "default"], default="retain",
                    help="retain: keep freed memory in the heap between forwards, as the node does "
                         "(ssl3d_ros.perception.heap); default: glibc's defaults")
    ap.add_argument("--voxel", type=float, default=None, help="override the per-size voxel size (m)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU time per forward instead of wall time; with --threads 1 and "
                         "--device cpu it is what a forward costs, whatever else the machine runs")
    ap.add_argument("--against", type=Path, default=None,
                    help="A/B: another checkout of this repository to alternate with this one (see above)")
    ap.add_argument("--rounds", type=int, default=4, help="with --against: runs of each side per configuration")
    ap.add_argument("--json", type=Path, default=None, help="also write all results here")
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scan", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single:
        print(json.dumps(run_single(args)))
        return
    if not DATA.is_dir():
        sys.exit(f"real data folder {DATA} is absent (set SSL3D_SHARED_DATA)")
    if args.against is not None and not (args.against / "ssl3d_ros" / "__init__.py").is_file():
        sys.exit(f"--against {args.against}: not a checkout of this repository (no ssl3d_ros/__init__.py)")
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    results = []
    if args.device == "auto":
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    for device in devices:
        dtype = args.cuda_dtype if device == "cuda" else "fp32"
        results += run_section(args, device, dtype)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
