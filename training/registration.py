"""Rigid registration of two scans of one sequence: Open3D point-to-plane ICP on voxelized copies.

``register(moving, fixed, cfg)`` returns the transform taking ``moving``'s points into ``fixed``'s
frame, with its fitness (the fraction of voxelized moving points that end within one registration
voxel of a fixed point) and the RMSE of those inliers; a pair below ``min_fitness`` or above
``max_rmse`` is marked rejected, and the caller counts it and falls back to single-scan views. The
fitness is measured at one voxel, not at the (wider) ICP search radius: at 0.9 m unrelated KITTI
scans still reach 0.5 (the ground plane matches anywhere), at 0.3 m they stay near 0.25 while
consecutive frames reach 0.75-0.95.

ICP runs coarse to fine (a 3x coarser grid first, with a 3x wider search) from the identity (or a
given guess): consecutive frames of a 10 Hz sensor are within about a metre of each other. Points
closer than ``min_range`` to the sensor are left out: returns from the vehicle itself move with the
sensor and would pull every estimate towards the identity.

``PairCache`` keeps results per ordered pair as small JSON files in the run folder, so each pair is
registered once per run, by whichever DataLoader worker meets it first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ssl3d_ros.atomic import atomic_write

log = logging.getLogger(__name__)


@dataclass
class RegistrationConfig:
    """Point-to-plane ICP settings (metres)."""

    voxel_size: float = 0.3  # grid the scans are voxelized to before ICP (the fine stage)
    max_distance: float = 0.9  # correspondence search radius of the fine stage (the coarse one: 3x)
    iterations: int = 30  # per stage
    min_range: float = 2.0  # points nearer the sensor are left out (ego-vehicle returns)
    min_fitness: float = 0.5  # reject the pair below this fitness (inliers within voxel_size) ...
    max_rmse: float = 0.2  # ... or above this inlier RMSE

    def validate(self, path: str = "registration") -> None:
        from ssl3d_ros.config import ConfigError

        for name in ("voxel_size", "max_distance", "max_rmse"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{path}.{name} must be > 0, got {getattr(self, name)}")
        if self.iterations < 1:
            raise ConfigError(f"{path}.iterations must be >= 1, got {self.iterations}")
        if not 0.0 <= self.min_fitness <= 1.0:
            raise ConfigError(f"{path}.min_fitness must be in 0..1, got {self.min_fitness}")
        if self.min_range < 0:
            raise ConfigError(f"{path}.min_range must be >= 0, got {self.min_range}")


@dataclass
class Registration:
    """``transform`` (4x4) maps the moving scan's points into the fixed scan's frame."""

    transform: np.ndarray
    fitness: float
    rmse: float
    accepted: bool
    reason: str = ""  # why a pair was rejected

    def to_json(self) -> dict:
        return {"transform": self.transform.tolist(), "fitness": self.fitness, "rmse": self.rmse,
                "accepted": self.accepted, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: dict) -> "Registration":
        transform = np.asarray(doc["transform"], dtype=np.float64)
        if transform.shape != (4, 4) or not np.all(np.isfinite(transform)):
            raise ValueError("transform is not a finite 4x4 matrix")
        return cls(transform, float(doc["fitness"]), float(doc["rmse"]), bool(doc["accepted"]), str(doc.get("reason", "")))


def registration_cloud(points: np.ndarray, voxel_size: float, min_range: float):
    """The Open3D cloud ICP runs on: points beyond ``min_range``, voxelized, with normals."""
    import open3d as o3d

    p = np.asarray(points, dtype=np.float64)
    p = p[np.all(np.isfinite(p), axis=1)]
    if min_range > 0:
        p = p[np.einsum("ij,ij->i", p, p) >= min_range**2]
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    cloud = cloud.voxel_down_sample(voxel_size)
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3.0 * voxel_size, max_nn=30))
    return cloud


def register(moving: np.ndarray, fixed: np.ndarray, cfg: RegistrationConfig, init: np.ndarray | None = None) -> Registration:
    """Point-to-plane ICP of ``moving`` onto ``fixed`` (both (N, 3) in their own sensor frames)."""
    import open3d as o3d

    icp = o3d.pipelines.registration
    transform = np.eye(4) if init is None else np.asarray(init, dtype=np.float64)
    for scale in (3.0, 1.0):
        voxel = cfg.voxel_size * scale
        src = registration_cloud(moving, voxel, cfg.min_range)
        dst = registration_cloud(fixed, voxel, cfg.min_range)
        if len(src.points) < 10 or len(dst.points) < 10:
            return Registration(transform, 0.0, float("inf"), False, f"too few points beyond {cfg.min_range} m to register")
        try:
            result = icp.registration_icp(
                src, dst, cfg.max_distance * scale, transform, icp.TransformationEstimationPointToPlane(),
                icp.ICPConvergenceCriteria(max_iteration=cfg.iterations),
            )
        except RuntimeError as exc:  # Open3D's errors (degenerate normals ...): a rejected pair, not a stopped run
            return Registration(transform, 0.0, float("inf"), False, f"ICP failed: {exc}")
        transform = np.asarray(result.transformation)
    quality = icp.evaluate_registration(src, dst, cfg.voxel_size, transform)
    fitness, rmse = float(quality.fitness), float(quality.inlier_rmse)
    reason = ""
    if fitness < cfg.min_fitness:
        reason = f"ICP fitness {fitness:.2f} < {cfg.min_fitness}"
    elif rmse > cfg.max_rmse:
        reason = f"ICP RMSE {rmse:.3f} m > {cfg.max_rmse} m"
    return Registration(transform.copy(), fitness, rmse, not reason, reason)


class PairCache:
    """Registrations by (moving, fixed, settings), one JSON file each under ``folder``.

    Writes are atomic, so two workers meeting the same pair at once both write a whole file (the
    same result); an unreadable file is ignored and recomputed.
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)

    def path(self, moving: str, fixed: str, cfg: RegistrationConfig) -> Path | None:
        if self.folder is None:
            return None
        key = json.dumps([moving, fixed, asdict(cfg)], sort_keys=True)
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"

    def get(self, moving: str, fixed: str, cfg: RegistrationConfig) -> Registration | None:
        path = self.path(moving, fixed, cfg)
        if path is None or not path.is_file():
            return None
        try:
            return Registration.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("ignoring cached registration %s: %s", path, exc)
            return None

    def put(self, moving: str, fixed: str, cfg: RegistrationConfig, result: Registration, seconds: float) -> None:
        path = self.path(moving, fixed, cfg)
        if path is None:
            return
        doc = {"moving": moving, "fixed": fixed, **result.to_json(), "seconds": seconds}
        text = json.dumps(doc, indent=1) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as exc:  # a full disk costs a recomputation next time, not the run
            log.debug("could not cache registration %s: %s", path, exc)


def cached_register(cache: PairCache, moving_name: str, fixed_name: str, moving: np.ndarray, fixed: np.ndarray,
                    cfg: RegistrationConfig) -> Registration:
    """``register`` through ``cache`` (rejected pairs are cached too: they stay rejected)."""
    hit = cache.get(moving_name, fixed_name, cfg)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    result = register(moving, fixed, cfg)
    cache.put(moving_name, fixed_name, cfg, result, time.perf_counter() - t0)
    return result


__all__ = ["RegistrationConfig", "Registration", "register", "registration_cloud", "PairCache", "cached_register"]
