"""Geometric quantities an encoder could shortcut to, as per-point regression targets for the audit.

- height: z above the scan's ground level, taken as the 2nd percentile of z (robust to a few points
  below the ground); removes the frame offset of world-frame scans.
- normal: unit surface normal from PCA of the ``k`` nearest neighbours, as absolute components
  |n_x|, |n_y|, |n_z| (a normal's sign is arbitrary without a viewpoint, so only its axis is a target).
  A scan's own ``normal`` field (simulated scans, meshes) is used instead when present.
- xyz: the coordinates as the scan gives them (sensor frame for sensor-frame scans), i.e. what
  positional leakage would let a probe read back.
- range: log(1 + distance from the scan frame's origin), the sensor for sensor-frame scans. A spinning
  LiDAR's point density falls with range squared, so an encoder can solve a view-matching objective by
  reading density (and so range) instead of what a surface is: on SemanticKITTI an encoder's PCA
  colours came out in rings around the sensor (issue 27). Log, because density changes as much
  between 5 and 10 m as between 40 and 80 m.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def sensor_range(points: np.ndarray) -> np.ndarray:
    """(N,) log(1 + |p|): the distance of each point from the scan frame's origin, log-scaled."""
    return np.log1p(np.linalg.norm(np.asarray(points, dtype=np.float64), axis=1))


def ground_height(points: np.ndarray) -> np.ndarray:
    z = np.asarray(points)[:, 2]
    return z - np.percentile(z, 2)


def estimate_normals_knn(points: np.ndarray, k: int = 16) -> np.ndarray:
    """(N, 3) unit normals: eigenvector of the smallest eigenvalue of each k-neighbourhood covariance."""
    pts = np.asarray(points, dtype=np.float64)
    k = min(k, len(pts))
    _, nbr = cKDTree(pts).query(pts, k=k)
    nbr = nbr.reshape(len(pts), k)
    local = pts[nbr] - pts[nbr].mean(1, keepdims=True)  # (N, k, 3)
    cov = np.einsum("nki,nkj->nij", local, local) / k
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, :, 0].astype(np.float32)


def normal_target(points: np.ndarray, normal_field: np.ndarray | None = None, k: int = 16) -> np.ndarray:
    normals = estimate_normals_knn(points, k) if normal_field is None else np.asarray(normal_field, dtype=np.float32)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.abs(normals / np.maximum(norm, 1e-9))


__all__ = ["ground_height", "estimate_normals_knn", "normal_target"]
