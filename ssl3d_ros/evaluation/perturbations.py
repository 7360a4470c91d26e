"""Sensor changes applied to a labelled scan, to test how robust a probe is (the real-data study).

Each perturbation returns the perturbed scan and, for every one of its points, the index of that
point in the original scan, so the perturbed prediction of a point is compared with the clean
prediction of the same point.

- ``half_beams``: a LiDAR with half the beams. Points are binned by elevation about the sensor
  origin into ``beams`` equal bins between the 0.1 and 99.9 percentile elevations, and the even bins
  kept (about half of the points). For an RGB-D mesh (no beams) a seeded random half is kept.
- ``range_noise``: Gaussian noise along each point's ray from the sensor origin (LiDAR range
  noise); for an RGB-D mesh (no single ray origin) isotropic Gaussian noise per axis.

The sensor origin is (0, 0, 0) for a scan in its sensor frame. A world-frame LiDAR scan needs it
given, or estimated by :func:`estimate_sensor_origin` (the ego vehicle's empty disc).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..scan import Scan

PERTURBATIONS = ("half_beams", "range_noise")
KITTI_SENSOR_HEIGHT = 1.73  # m above the ground (HDL-64E on the KITTI car)


@dataclass(frozen=True)
class SensorModel:
    """What a perturbation needs to know about how a scan was recorded."""

    kind: Literal["lidar", "rgbd"] = "lidar"
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # sensor position in the scan's frame (lidar)
    beams: int = 64  # elevation bins of the full sensor (lidar)
    range_noise: float = 0.10  # m, std along the ray (lidar)
    axis_noise: float = 0.05  # m, std per axis (rgbd)

    def describe(self) -> dict[str, str]:
        if self.kind == "rgbd":
            return {"half_beams": "random 50% of the points (an RGB-D mesh has no beams)",
                    "range_noise": f"N(0, {self.axis_noise:g} m) per axis (a fused mesh has no single ray origin)"}
        at = ", ".join(f"{v:.2f}" for v in self.origin)
        return {"half_beams": f"even bins of {self.beams} elevation bins about the sensor origin ({at}) kept",
                "range_noise": f"N(0, {self.range_noise:g} m) along the ray from ({at})"}


def estimate_sensor_origin(points: np.ndarray, sensor_height: float = KITTI_SENSOR_HEIGHT) -> np.ndarray:
    """Sensor position of a single world-frame spinning-LiDAR scan: the centre of the empty disc the
    ego vehicle leaves in the densest region (searched within 8 m of the 1 m xy density peak), at
    the ground level there (5th height percentile within 10 m) + ``sensor_height``."""
    from scipy.spatial import cKDTree

    xy = np.asarray(points)[:, :2].astype(np.float64)
    lo = np.floor(xy.min(0))
    cells = np.floor(xy - lo).astype(np.int64)
    counts = np.zeros(cells.max(0) + 1, dtype=np.int64)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    peak = lo + np.array(np.unravel_index(counts.argmax(), counts.shape)) + 0.5
    grid = np.arange(-8.0, 8.01, 0.25)
    candidates = peak + np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    dist, _ = cKDTree(xy).query(candidates)
    centre = candidates[dist.argmax()]
    near = np.hypot(*(xy - centre).T) < 10.0
    z = np.asarray(points)[:, 2]
    ground = np.percentile(z[near], 5) if near.any() else np.percentile(z, 5)
    return np.array([centre[0], centre[1], ground + sensor_height])


def elevation_bins(points: np.ndarray, origin: np.ndarray, beams: int) -> np.ndarray:
    """(N,) int64 elevation bin of every point about ``origin``: ``beams`` equal bins between the
    0.1 and 99.9 percentile elevations (the outliers go into the first and last bin)."""
    rel = np.asarray(points, dtype=np.float64) - np.asarray(origin, dtype=np.float64)
    elevation = np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1]) + 1e-6)
    lo, hi = np.percentile(elevation, 0.1), np.percentile(elevation, 99.9)
    scaled = (elevation - lo) / max(hi - lo, 1e-9) * beams
    return np.clip(np.floor(scaled), 0, beams - 1).astype(np.int64)


def half_beams(scan: Scan, sensor: SensorModel, rng: np.random.Generator) -> tuple[Scan, np.ndarray]:
    if sensor.kind == "rgbd":
        index = np.sort(rng.choice(len(scan), len(scan) // 2, replace=False))
    else:
        index = np.flatnonzero(elevation_bins(scan.points, np.asarray(sensor.origin), sensor.beams) % 2 == 0)
    return scan.select(index), index


def range_noise(scan: Scan, sensor: SensorModel, rng: np.random.Generator) -> tuple[Scan, np.ndarray]:
    n = len(scan)
    pts = scan.points.astype(np.float64)
    if sensor.kind == "rgbd":
        pts = pts + rng.normal(0, sensor.axis_noise, pts.shape)
    else:
        origin = np.asarray(sensor.origin, dtype=np.float64)
        ray = pts - origin
        r = np.linalg.norm(ray, axis=1, keepdims=True)
        pts = origin + ray / np.maximum(r, 1e-6) * (r + rng.normal(0, sensor.range_noise, (n, 1)))
    return dataclasses.replace(scan, points=pts.astype(np.float32)), np.arange(n)


def perturb(scan: Scan, kind: str, sensor: SensorModel, seed: int) -> tuple[Scan, np.ndarray]:
    """(perturbed scan, index of each of its points in ``scan``); seeded, so every run sees the same copy."""
    rng = np.random.default_rng(10_000 + seed)
    if kind == "half_beams":
        return half_beams(scan, sensor, rng)
    if kind == "range_noise":
        return range_noise(scan, sensor, rng)
    raise ValueError(f"unknown perturbation {kind!r}; known: {list(PERTURBATIONS)}")


__all__ = ["PERTURBATIONS", "SensorModel", "elevation_bins", "estimate_sensor_origin", "half_beams", "perturb",
           "range_noise"]
