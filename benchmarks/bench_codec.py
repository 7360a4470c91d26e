#!/usr/bin/env python3
"""PointCloud2 codec speed: ssl3d_ros.codec vs a per-field codec (sensor_msgs_py semantics) vs a raw copy.

Encoding is timed up to a publish-ready rclpy ``sensor_msgs.msg.PointCloud2`` with ``data`` set; the
target is at most 2x one raw copy of the cloud's bytes. All variants run in the same process on the
same arrays, so ratios are meaningful even where absolute times are not (run on a quiet machine).

    .venv/bin/python benchmarks/bench_codec.py --points 120000 --dims 64 --repeats 15
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

sys.path.insert(0, str(Path(__file__).resolve().parent))
import per_field_codec as reference  # noqa: E402

from ssl3d_ros.codec import UINT8, decode_cloud, encode_cloud, fill_cloud_message, scan_from_cloud  # noqa: E402


def make_inputs(points: int, dims: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    coords = rng.normal(0, 30, size=(points, 3)).astype(np.float32)
    coords[rng.random(points) < 0.02, 0] = np.nan  # a few dropped returns, as from a real sensor
    extras = {
        "class_id": rng.integers(0, 20, size=points).astype(np.uint8),
        "probability": rng.random(points, dtype=np.float32),
        "entropy": rng.random(points, dtype=np.float32),
        "rgb": rng.integers(0, 256, size=(points, 3), dtype=np.uint8),
    }
    if dims:
        extras["embedding"] = rng.normal(size=(points, dims)).astype(np.float32)
    return coords, extras


def timed(fn, repeats: int, warmup: bool = True) -> float:
    """Median wall time in ms of ``fn()`` (one untimed warm-up; GC off while timing)."""
    if warmup:
        fn()
    samples = []
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn()
            samples.append(time.perf_counter() - start)
            del result
    finally:
        gc.enable()
    return statistics.median(samples) * 1e3


def encode_ours(coords, extras, align):
    encoded = encode_cloud(coords, extras, field_types={"class_id": UINT8}, align=align)
    return fill_cloud_message(PointCloud2(), encoded, PointField)


def encode_per_field(coords, extras, fields, dtype):
    """What a sensor_msgs_py user does: fill a structured array column by column, then create_cloud."""
    packed = np.zeros(len(coords), dtype=dtype)
    for i, name in enumerate("xyz"):
        packed[name] = coords[:, i]
    for name, values in extras.items():
        if name == "rgb":
            packed[name] = (
                (values[:, 0].astype(np.uint32) << 16) | (values[:, 1].astype(np.uint32) << 8) | values[:, 2]
            ).view(np.float32)
        elif values.ndim == 2:
            for k in range(values.shape[1]):
                packed[f"{name}_{k}"] = values[:, k]
        else:
            packed[name] = values
    return reference.create_cloud(None, fields, packed, point_step=dtype.itemsize,
                                  cloud_factory=lambda header, **kw: PointCloud2(**kw))


def decode_per_field(msg, dims):
    points = reference.read_points(msg, skip_nans=True)
    out = {"xyz": np.stack([points[c] for c in "xyz"], axis=1).astype(np.float32)}
    for name in ("class_id", "probability", "entropy", "rgb"):
        out[name] = np.ascontiguousarray(points[name])
    if dims:
        out["embedding"] = np.stack([points[f"embedding_{k}"] for k in range(dims)], axis=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--dims", type=int, default=64, help="embedding width D (0: no embedding field)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--align", action="store_true", help="naturally aligned layout (Autoware style)")
    parser.add_argument("--slow-paths", action="store_true",
                        help="also time msg.data = memoryview (element-wise conversion; slow, timed once)")
    args = parser.parse_args()

    coords, extras = make_inputs(args.points, args.dims)
    msg = encode_ours(coords, extras, args.align)
    nbytes = len(msg.data)
    fields = list(msg.fields)
    dtype = reference.dtype_from_fields(fields, msg.point_step)
    raw = np.frombuffer(msg.data, np.uint8)
    print(f"cloud: {args.points} points, D={args.dims}, point_step {msg.point_step} B, "
          f"{nbytes / 1e6:.1f} MB, align={args.align}")

    results: dict[str, float] = {}
    results["raw copy: bytes(buffer)"] = timed(lambda: bytes(msg.data), args.repeats)
    results["raw copy: np.copy"] = timed(lambda: np.copy(raw), args.repeats)
    results["encode: ssl3d codec -> PointCloud2"] = timed(lambda: encode_ours(coords, extras, args.align), args.repeats)
    results["encode: per-field + create_cloud -> PointCloud2"] = timed(
        lambda: encode_per_field(coords, extras, fields, dtype), args.repeats)

    def set_data_default():
        m = PointCloud2()
        m.data = msg.data  # generated setter without check_fields: array.array('B', value) copy
        return m
    results["msg.data = array.array (setter copy)"] = timed(set_data_default, args.repeats)
    if args.slow_paths:
        view = memoryview(raw)
        results["msg.data = memoryview (element-wise)"] = timed(lambda: _set(view), 1, warmup=False)

    results["decode: decode_cloud(skip_nans) (views)"] = timed(lambda: decode_cloud(msg, skip_nans=True), args.repeats)
    results["decode: scan_from_cloud (owned arrays)"] = timed(lambda: scan_from_cloud(msg), args.repeats)
    results["decode: per-field read_points + columns"] = timed(lambda: decode_per_field(msg, args.dims), args.repeats)

    width = max(map(len, results))
    copy_ms = results["raw copy: bytes(buffer)"]
    print(f"{'':{width}}  median ms   x raw copy")
    for name, ms in results.items():
        print(f"{name:{width}}  {ms:9.2f}   {ms / copy_ms:6.2f}")
    enc_ratio = results["encode: ssl3d codec -> PointCloud2"] / copy_ms
    speedup = results["encode: per-field + create_cloud -> PointCloud2"] / results["encode: ssl3d codec -> PointCloud2"]
    print(f"encode to publish-ready message: {enc_ratio:.2f}x one raw copy (target <= 2.00x); "
          f"{speedup:.1f}x faster than per-field")


def _set(value):
    m = PointCloud2()
    m.data = value
    return m


if __name__ == "__main__":
    main()
