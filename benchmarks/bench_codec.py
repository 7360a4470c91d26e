#!/usr/bin/env python3
"""PointCloud2 codec speed: ssl3d_ros.codec against the real upstream sensor_msgs_py, in the same run.

The baseline is sensor_msgs_py.point_cloud2 (rolling, from ../shared/ros2_launch/site; override with
SSL3D_ROS2_LAUNCH), the library a ROS 2 user would call instead:

- encode x, y, z + a D-dim float32 embedding to a publish-ready rclpy PointCloud2: ours
  (``encode_cloud`` + ``fill_cloud_message``) against ``create_cloud`` given the same fields and the
  columns side by side as one (N, 3 + D) float32 array (the fastest way to call it: its unstructured
  path; building that array is part of its time, since the caller holds xyz and the embedding apart);
- decode x, y, z of a 16-byte-point cloud (x, y, z, intensity; the common driver layout): ``xyz(
  decode_cloud(msg))`` against ``read_points_numpy(msg, ["x", "y", "z"])``, without and with
  ``skip_nans``.

Every pair is checked bit-identical (same bytes out of encode, same float32 bits out of decode) before
it is timed. Medians over ``--repeats`` runs after one warm-up, GC off; the ratio is upstream / ours
(> 1: ours is faster), which holds on a busy machine where absolute times do not.

    .venv/bin/python benchmarks/bench_codec.py --points 120000 --dims 64 --repeats 15
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from ssl3d_ros.codec import decode_cloud, encode_cloud, fill_cloud_message, xyz

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_SITE = Path(os.environ.get("SSL3D_ROS2_LAUNCH", REPO.parent / "shared" / "ros2_launch")) / "site"
TARGETS = {"encode": 4.0, "decode": 1.0, "decode skip_nans": 1.0}  # upstream / ours, at least


def upstream_point_cloud2():
    if not (UPSTREAM_SITE / "sensor_msgs_py").is_dir():
        raise SystemExit(f"bench_codec: upstream sensor_msgs_py not found in {UPSTREAM_SITE} "
                         "(set SSL3D_ROS2_LAUNCH to the folder holding site/)")
    sys.path.insert(0, str(UPSTREAM_SITE))
    return importlib.import_module("sensor_msgs_py.point_cloud2")


def timed(fn, repeats: int) -> float:
    """Median wall time in ms of ``fn()`` (one untimed warm-up; GC off while timing)."""
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


def embedding_cloud_inputs(points: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    coords = rng.normal(0, 30, size=(points, 3)).astype(np.float32)
    coords[rng.random(points) < 0.02, 0] = np.nan  # a few dropped returns, as from a real sensor
    return coords, rng.normal(size=(points, dims)).astype(np.float32)


def encode_ours(coords: np.ndarray, embedding: np.ndarray) -> PointCloud2:
    return fill_cloud_message(PointCloud2(), encode_cloud(coords, {"embedding": embedding}), PointField)


def encode_upstream(pc2, fields: list, coords: np.ndarray, embedding: np.ndarray) -> PointCloud2:
    return pc2.create_cloud(None, fields, np.hstack([coords, embedding]))


def driver_cloud(points: int, seed: int = 1) -> PointCloud2:
    """x, y, z, intensity float32 (point_step 16), ~2% NaN returns, as an rclpy message."""
    rng = np.random.default_rng(seed)
    coords = rng.normal(0, 30, size=(points, 3)).astype(np.float32)
    coords[rng.random(points) < 0.02] = np.nan
    intensity = rng.random(points, dtype=np.float32)
    msg = fill_cloud_message(PointCloud2(), encode_cloud(coords, {"intensity": intensity}), PointField)
    assert msg.point_step == 16
    return msg


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--dims", type=int, default=64, help="embedding width D")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    pc2 = upstream_point_cloud2()

    coords, embedding = embedding_cloud_inputs(args.points, args.dims)
    ours_msg = encode_ours(coords, embedding)
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    fields.append(PointField(name="embedding", offset=12, datatype=PointField.FLOAT32, count=args.dims))
    upstream_msg = encode_upstream(pc2, fields, coords, embedding)
    assert bytes(ours_msg.data) == bytes(upstream_msg.data), "encode: bytes differ from create_cloud's"
    assert (ours_msg.point_step, ours_msg.row_step) == (upstream_msg.point_step, upstream_msg.row_step)

    driver = driver_cloud(args.points)
    for skip in (False, True):
        ours = xyz(decode_cloud(driver, skip_nans=skip))
        theirs = pc2.read_points_numpy(driver, field_names=["x", "y", "z"], skip_nans=skip)
        assert same_bits(ours, theirs), f"decode (skip_nans={skip}): values differ from read_points_numpy"

    print(f"{args.points} points; encode: x, y, z + {args.dims}-D float32 ({len(ours_msg.data) / 1e6:.1f} MB); "
          f"decode: x, y, z of point_step 16 ({len(driver.data) / 1e6:.1f} MB); values bit-identical to upstream")
    rows = {
        "encode": (timed(lambda: encode_ours(coords, embedding), args.repeats),
                   timed(lambda: encode_upstream(pc2, fields, coords, embedding), args.repeats)),
        "decode": (timed(lambda: xyz(decode_cloud(driver)), args.repeats),
                   timed(lambda: pc2.read_points_numpy(driver, field_names=["x", "y", "z"]), args.repeats)),
        "decode skip_nans": (
            timed(lambda: xyz(decode_cloud(driver, skip_nans=True)), args.repeats),
            timed(lambda: pc2.read_points_numpy(driver, field_names=["x", "y", "z"], skip_nans=True), args.repeats)),
    }
    copy_ms = timed(lambda: bytes(ours_msg.data), args.repeats)
    print(f"{'operation':18} {'ours ms':>9} {'upstream ms':>12} {'upstream/ours':>14} {'target':>7}")
    for name, (ours_ms, upstream_ms) in rows.items():
        ratio = upstream_ms / ours_ms
        verdict = "ok" if ratio >= TARGETS[name] else "MISSED"
        print(f"{name:18} {ours_ms:9.3f} {upstream_ms:12.3f} {ratio:14.2f} {'>=' + str(TARGETS[name]):>7} {verdict}")
    print(f"(one raw copy of the encoded cloud, bytes(msg.data): {copy_ms:.2f} ms)")


if __name__ == "__main__":
    main()
