"""Sensor models: a spinning multi-beam LiDAR and a pinhole depth camera.

Both cast rays from poses on a :mod:`paths` path into a :class:`LabelledScene` and return points in
their own frame. The LiDAR places every column at its firing time along the path, like a raw driver
output (no de-skew), and reports the per-point ``time`` offset from the scan stamp.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scan import Scan
from .paths import SensorPath
from .raycast import LabelledScene


@dataclass
class SpinningLidar:
    """A rotating LiDAR with ``beams`` rows spread evenly over [fov_lower_deg, fov_upper_deg]."""

    beams: int = 32
    fov_lower_deg: float = -30.0
    fov_upper_deg: float = 10.0
    columns: int = 1024  # points per revolution per beam
    min_range: float = 0.5
    max_range: float = 80.0
    range_noise_sigma: float = 0.02  # metres, Gaussian
    dropout_prob: float = 0.01  # returns lost at random
    min_return_intensity: float = 0.003  # weaker returns (dark, far, grazing) are not reported
    mount_height: float = 1.73  # metres above the ground
    rate_hz: float = 10.0  # revolutions (= scans) per second
    intensity_falloff_m: float = 35.0  # range at which the returned intensity has halved
    intensity_noise_sigma: float = 0.02
    motion_distortion: bool = True  # place each column at its firing time along the path (else: snapshot, time = 0)
    frame_id: str = "lidar"
    # Static mounting tilt (calibration offsets), degrees; positive pitch tips the front down.
    mount_pitch_deg: float = 0.0
    mount_roll_deg: float = 0.0
    # Optional beam table (degrees, ascending, one per beam) for sensors with uneven beam spacing;
    # None spreads the beams evenly over the field of view.
    elevations_deg: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.elevations_deg is not None:
            table = np.asarray(self.elevations_deg, dtype=float)
            if len(table) != self.beams or np.any(np.diff(table) <= 0):
                raise ValueError(f"SpinningLidar.elevations_deg must hold {self.beams} ascending angles")
            if table[0] < self.fov_lower_deg or table[-1] > self.fov_upper_deg:
                raise ValueError("SpinningLidar.elevations_deg must lie within [fov_lower_deg, fov_upper_deg]")
        if not 1 <= self.beams <= 256:
            raise ValueError(f"SpinningLidar.beams must be in 1..256, got {self.beams}")
        if self.columns < 8:
            raise ValueError(f"SpinningLidar.columns must be >= 8, got {self.columns}")
        if not self.fov_lower_deg < self.fov_upper_deg:
            raise ValueError("SpinningLidar.fov_lower_deg must be below fov_upper_deg")
        if not 0 <= self.min_range < self.max_range:
            raise ValueError("SpinningLidar ranges must satisfy 0 <= min_range < max_range")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError("SpinningLidar.dropout_prob must be in [0, 1)")
        if self.rate_hz <= 0:
            raise ValueError("SpinningLidar.rate_hz must be positive")

    def elevations(self) -> np.ndarray:
        """(beams,) elevation angles in radians, ring 0 lowest (Velodyne convention)."""
        if self.elevations_deg is not None:
            return np.radians(np.asarray(self.elevations_deg, dtype=float))
        if self.beams == 1:
            return np.radians(np.array([0.5 * (self.fov_lower_deg + self.fov_upper_deg)]))
        return np.radians(np.linspace(self.fov_lower_deg, self.fov_upper_deg, self.beams))

    def azimuths(self) -> np.ndarray:
        """(columns,) azimuths in firing order: starting behind the sensor, turning clockwise."""
        return np.pi - 2.0 * np.pi * np.arange(self.columns) / self.columns

    def mount_rotation(self) -> np.ndarray:
        """3x3 rotation from the sensor frame to the level, heading-aligned platform frame."""
        return pitch_roll_rotation(np.radians(self.mount_pitch_deg), np.radians(self.mount_roll_deg))

    def directions(self) -> np.ndarray:
        """(columns, beams, 3) unit ray directions in the sensor frame (x forward, y left, z up)."""
        elevation = self.elevations()[None, :]
        azimuth = self.azimuths()[:, None]
        return np.stack(np.broadcast_arrays(
            np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)), axis=-1)


@dataclass
class DepthCamera:
    """A pinhole depth camera (square pixels) looking forward, tilted down by ``tilt_deg``."""

    width: int = 160
    height: int = 120
    hfov_deg: float = 87.0
    min_range: float = 0.2  # metres of depth (along the optical axis)
    max_range: float = 8.0
    depth_noise_coeff: float = 0.0015  # depth noise sigma = coeff * depth^2 (structured-light-like)
    dropout_prob: float = 0.01
    mount_height: float = 0.8
    tilt_deg: float = 10.0
    rate_hz: float = 10.0
    frame_id: str = "depth_optical_frame"

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2:
            raise ValueError("DepthCamera needs width and height >= 2 (an organized image)")
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError("DepthCamera.hfov_deg must be in (0, 180)")
        if not 0 <= self.min_range < self.max_range:
            raise ValueError("DepthCamera ranges must satisfy 0 <= min_range < max_range")

    def optical_rays(self) -> np.ndarray:
        """(height, width, 3) unit rays in the optical frame (x right, y down, z forward)."""
        focal = (self.width / 2.0) / np.tan(np.radians(self.hfov_deg) / 2.0)
        u = (np.arange(self.width) - (self.width - 1) / 2.0) / focal
        v = (np.arange(self.height) - (self.height - 1) / 2.0) / focal
        gu, gv = np.meshgrid(u, v)
        rays = np.stack([gu, gv, np.ones_like(gu)], axis=-1)
        return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


@dataclass(frozen=True)
class DepthFrame:
    """An organized cloud: ``points`` (H, W, 3) in the optical frame, NaN where no valid return;
    ``labels`` (H, W) int32 (0 where no return); ``depth`` (H, W) float32 metres (NaN holes)."""

    points: np.ndarray
    labels: np.ndarray
    depth: np.ndarray
    stamp_ns: int
    frame_id: str
    source: str = ""

    @property
    def height(self) -> int:
        return self.points.shape[0]

    @property
    def width(self) -> int:
        return self.points.shape[1]

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.depth)

    def to_scan(self, keep_invalid: bool = False) -> Scan:
        """Row-major flattened scan; ``keep_invalid`` keeps the NaN pixels (H*W points, organized order)."""
        points = self.points.reshape(-1, 3)
        labels = self.labels.reshape(-1)
        if not keep_invalid:
            keep = self.valid.reshape(-1)
            points, labels = points[keep], labels[keep]
        return Scan(points=points, frame_id=self.frame_id, stamp_ns=self.stamp_ns, labels=labels, source=self.source)


def pitch_roll_rotation(pitch: float, roll: float) -> np.ndarray:
    """R_y(pitch) @ R_x(roll): roll about the sensor's x axis first, then pitch about y."""
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    r_y = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    r_x = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return r_y @ r_x


def rotate_yaw(vectors: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) vectors about z by per-vector ``yaw`` (broadcast over leading dims)."""
    c, s = np.cos(yaw), np.sin(yaw)
    x, y = vectors[..., 0], vectors[..., 1]
    return np.stack([c * x - s * y, s * x + c * y, vectors[..., 2]], axis=-1)


def lidar_scan(scene: LabelledScene, path: SensorPath, start_s: float, lidar: SpinningLidar,
               rng: np.random.Generator, stamp_ns: int, source: str = "") -> Scan:
    """One revolution starting at path time ``start_s``; points in the sensor frame, firing order
    (column by column, ring 0 first in each column), misses and out-of-range returns removed."""
    directions = lidar.directions()  # (W, B, 3)
    columns, beams = directions.shape[:2]
    column_time = np.arange(columns) / (columns * lidar.rate_hz)
    if not lidar.motion_distortion:
        column_time = np.zeros_like(column_time)
    xy, yaw = path.pose(start_s + column_time)
    origins = np.concatenate([xy, np.full((columns, 1), lidar.mount_height)], axis=1)
    world_dirs = rotate_yaw(directions @ lidar.mount_rotation().T, yaw[:, None])
    hits = scene.cast(np.repeat(origins, beams, axis=0), world_dirs.reshape(-1, 3))

    # Draw every random number for every ray, hit or not, so the streams never depend on the scene.
    n = columns * beams
    range_noise = rng.normal(0.0, lidar.range_noise_sigma, n)
    intensity_noise = rng.normal(0.0, lidar.intensity_noise_sigma, n)
    dropped = rng.random(n) < lidar.dropout_prob
    depth_into_surface = rng.exponential(1.0, n) * hits.penetration  # foliage: returns from inside

    distance = hits.distance.astype(np.float64)
    measured = np.where(hits.hit, distance + depth_into_surface + range_noise, np.inf)
    falloff = 1.0 / (1.0 + (np.where(hits.hit, distance, 0.0) / lidar.intensity_falloff_m) ** 2)
    return_strength = hits.reflectivity * hits.cos_incidence * falloff
    keep = (hits.hit & ~dropped & (measured >= lidar.min_range) & (measured <= lidar.max_range)
            & (return_strength >= lidar.min_return_intensity))
    intensity = np.clip(return_strength + intensity_noise, 0.0, 1.0)

    points = directions.reshape(-1, 3)[keep] * measured[keep, None]
    ring = np.broadcast_to(np.arange(beams, dtype=np.uint16), (columns, beams)).reshape(-1)
    # Firing time of each point; all zero without motion distortion (the scan is then a snapshot, and
    # a consumer de-skewing by time must not correct motion that is not there).
    time = np.broadcast_to(column_time[:, None], (columns, beams)).reshape(-1)
    return Scan(
        points=points.astype(np.float32),
        fields={
            "intensity": intensity[keep].astype(np.float32),
            "ring": ring[keep].copy(),
            "time": time[keep].astype(np.float32),
        },
        frame_id=lidar.frame_id,
        stamp_ns=int(stamp_ns),
        labels=hits.label[keep],
        intensity_scale=1.0,
        source=source,
    )


def depth_frame(scene: LabelledScene, path: SensorPath, time_s: float, camera: DepthCamera,
                rng: np.random.Generator, stamp_ns: int, source: str = "") -> DepthFrame:
    """One depth image at path time ``time_s`` (global shutter)."""
    optical = camera.optical_rays()  # (H, W, 3)
    # optical (x right, y down, z forward) -> body (x forward, y left, z up), then pitch down by tilt
    body = np.stack([optical[..., 2], -optical[..., 0], -optical[..., 1]], axis=-1)
    pitched = body @ pitch_roll_rotation(np.radians(camera.tilt_deg), 0.0).T
    xy, yaw = path.pose(np.array([time_s]))
    world_dirs = rotate_yaw(pitched, yaw[0]).reshape(-1, 3)
    origin = np.array([xy[0, 0], xy[0, 1], camera.mount_height])
    hits = scene.cast(np.broadcast_to(origin, world_dirs.shape), world_dirs)

    shape = optical.shape[:2]
    n = shape[0] * shape[1]
    unit_noise = rng.normal(0.0, 1.0, n)
    dropped = rng.random(n) < camera.dropout_prob
    depth_into_surface = rng.exponential(1.0, n) * hits.penetration
    rays = optical.reshape(-1, 3)
    true_depth = np.where(hits.hit, (hits.distance + depth_into_surface) * rays[:, 2], np.inf)
    depth = true_depth + camera.depth_noise_coeff * np.where(hits.hit, true_depth, 0.0) ** 2 * unit_noise
    valid = hits.hit & ~dropped & (depth >= camera.min_range) & (depth <= camera.max_range)
    depth = np.where(valid, depth, np.nan)
    points = rays * (depth / rays[:, 2])[:, None]  # NaN rows stay NaN
    return DepthFrame(
        points=points.reshape(*shape, 3).astype(np.float32),
        labels=np.where(valid, hits.label, 0).reshape(shape).astype(np.int32),
        depth=depth.reshape(shape).astype(np.float32),
        stamp_ns=int(stamp_ns),
        frame_id=camera.frame_id,
        source=source,
    )
