"""The device script's one door into the benchmark code: every function it takes from
``benchmarks/bench_*.py`` is imported here and nowhere else in ``benchmarks/device/``.

The node section drives the node through the library harness (``ssl3d_ros.evaluation.node_harness``:
``NodeProcess``, ``Harness``) with bench_node's own functions on top of it (see :func:`node_bench`).
"""
from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench_encoder  # noqa: E402
import bench_training  # noqa: E402


def encoder_scans() -> dict[str, tuple[str, float]]:
    """Benchmark scans: name -> (path under the data folder, intensity scale)."""
    return bench_encoder.SCANS


def data_folder() -> Path:
    return bench_encoder.DATA


def encoder_voxel(size: str) -> float:
    return bench_encoder.VOXEL[size]


def voxelize_scan(path: Path, intensity_scale: float, voxel: float):
    """(points, coords (M, 4) int32, feats (M, 4) float32) as the encoder benchmark feeds them."""
    return bench_encoder.voxelize(path, intensity_scale, voxel)


def build_encoder(size: str, backend: str):
    """A benchmark encoder (the presets, or the ``ref16`` yardstick) with an ``infer(x, dtype)``."""
    return bench_encoder.build_model(size, backend)


def time_encoder(**single) -> dict:
    """One (scan, size, backend, device, dtype) encoder measurement in this process."""
    from types import SimpleNamespace

    defaults = dict(threads=1, heap="default", voxel=None, warmup=3, repeats=10, clock="wall")
    return bench_encoder.run_single(SimpleNamespace(**{**defaults, **single}))


def time_recipe(name: str, scans, steps: int, warmup: int, device, **options) -> dict:
    """One recipe's optimisation steps (median) against a plain encoder step, in this process."""
    return bench_training.bench_recipe(name, scans, steps, warmup, device, **options)


def node_bench():
    """The node benchmark module: ``open_harness(all_outputs, decode_outputs)`` (the library ``Harness``
    on the bench topics), ``run(harness, msg, rate_hz, duration_s, node_pid)`` (latency p50/p90/p99,
    stage medians, node RSS and CPU),
    ``in_process_ms`` (the no-ROS baseline), ``load_scan``, ``benchmark_checkpoint`` and the topic names."""
    import bench_node

    return bench_node
