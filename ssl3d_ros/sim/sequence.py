"""Sequences of simulated scans: one seeded scene, a sensor moving along a path, 10 Hz stamps.

``simulate_sequence(cfg, n_scans, seed)`` is the entry point. Scan ``k`` depends only on
``(cfg, seed, k)``: the same seed gives bit-identical scans, a longer sequence starts with exactly
the scans of a shorter one, and different seeds give different layouts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np

from ..scan import Scan
from .paths import LoopPath, SensorPath, StreetPath, world_from_sensor
from .raycast import LabelledScene
from .scenes import (
    IndoorSceneConfig, OutdoorSceneConfig, class_colors, class_names, indoor_scene, outdoor_scene,
    room_dimensions, room_path, stream, street_layout, street_path,
)
from .sensors import DepthCamera, DepthFrame, SpinningLidar, depth_frame, lidar_scan

SceneType = Literal["outdoor", "indoor"]
NOISE_STREAM = 3
DEFAULT_START_STAMP_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, fixed so bags are reproducible


@dataclass
class SimConfig:
    """What to simulate. ``lidar``/``depth_camera``/``speed_mps`` left as None take the scene's
    defaults (:func:`default_lidar`, :func:`default_depth_camera`, 5 m/s outdoors, 1 m/s indoors);
    a given ``lidar`` mapping is a complete spec (its unset keys take SpinningLidar's defaults)."""

    scene: SceneType = "outdoor"
    lidar: SpinningLidar | None = None
    depth_camera: DepthCamera | None = None
    speed_mps: float | None = None
    start_stamp_ns: int = DEFAULT_START_STAMP_NS
    threads: int = 1  # ray-casting threads (0 = all cores); 1 keeps data-loader workers from oversubscribing
    outdoor: OutdoorSceneConfig = field(default_factory=OutdoorSceneConfig)
    indoor: IndoorSceneConfig = field(default_factory=IndoorSceneConfig)


def default_lidar(scene: SceneType) -> SpinningLidar:
    """HDL-32-like on a car outdoors; a symmetric +-22.5 deg field of view on a small robot indoors."""
    if scene == "indoor":
        return SpinningLidar(fov_lower_deg=-22.5, fov_upper_deg=22.5, min_range=0.3, max_range=30.0,
                             range_noise_sigma=0.01, mount_height=0.6, intensity_falloff_m=15.0)
    return SpinningLidar()


def default_depth_camera(scene: SceneType) -> DepthCamera:
    if scene == "indoor":
        return DepthCamera()
    return DepthCamera(max_range=15.0, mount_height=1.5, tilt_deg=5.0)


def default_speed(scene: SceneType) -> float:
    return 1.0 if scene == "indoor" else 5.0


@dataclass(frozen=True)
class SimWorld:
    """A built scene with its sensor path and sensors; ``lidar_scan(k)`` renders scan ``k``."""

    scene_type: SceneType
    seed: int
    scene: LabelledScene
    path: SensorPath
    lidar: SpinningLidar
    camera: DepthCamera
    start_stamp_ns: int

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.scene_type)

    @property
    def class_colors(self) -> np.ndarray:
        return class_colors(self.scene_type)

    def period_ns(self, rate_hz: float) -> int:
        return int(round(1e9 / rate_hz))

    def lidar_stamp_ns(self, k: int) -> int:
        return self.start_stamp_ns + k * self.period_ns(self.lidar.rate_hz)

    def lidar_scan(self, k: int) -> Scan:
        rng = stream(self.seed, NOISE_STREAM, k)
        start_s = k * self.period_ns(self.lidar.rate_hz) * 1e-9
        return lidar_scan(self.scene, self.path, start_s, self.lidar, rng, self.lidar_stamp_ns(k),
                          source=f"sim:{self.scene_type}:seed{self.seed}#{k}")

    def depth_frame(self, k: int) -> DepthFrame:
        rng = stream(self.seed, NOISE_STREAM + 1, k)
        period = self.period_ns(self.camera.rate_hz)
        return depth_frame(self.scene, self.path, k * period * 1e-9, self.camera, rng,
                           self.start_stamp_ns + k * period,
                           source=f"sim:{self.scene_type}:seed{self.seed}:depth#{k}")

    def lidar_pose(self, k: int) -> np.ndarray:
        """4x4 world-from-lidar pose at scan ``k``'s stamp (the first column's firing time)."""
        xy, yaw = self.path.pose(np.array([k * self.period_ns(self.lidar.rate_hz) * 1e-9]))
        pose = world_from_sensor(xy[0], float(yaw[0]), self.lidar.mount_height)
        pose[:3, :3] = pose[:3, :3] @ self.lidar.mount_rotation()
        return pose


def build_world(cfg: SimConfig | None, seed: int, duration_s: float) -> SimWorld:
    """The scene for ``seed``, large enough for a sensor driving ``duration_s`` seconds."""
    cfg = cfg or SimConfig()
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    lidar = cfg.lidar or default_lidar(cfg.scene)
    camera = cfg.depth_camera or default_depth_camera(cfg.scene)
    speed = default_speed(cfg.scene) if cfg.speed_mps is None else cfg.speed_mps
    if cfg.scene == "outdoor":
        layout = street_layout(cfg.outdoor, seed)
        path: SensorPath = street_path(cfg.outdoor, layout, speed)
        reach = max(lidar.max_range, camera.max_range)
        start, end = path.length_for(duration_s)
        mesh = outdoor_scene(cfg.outdoor, seed, (start - reach, end + reach))
    elif cfg.scene == "indoor":
        room = room_dimensions(cfg.indoor, seed)
        path = room_path(cfg.indoor, room, speed, seed)
        mesh = indoor_scene(cfg.indoor, seed, path)
    else:
        raise ValueError(f"unknown scene type {cfg.scene!r}; expected 'outdoor' or 'indoor'")
    return SimWorld(cfg.scene, seed, LabelledScene(mesh, threads=cfg.threads), path, lidar, camera, cfg.start_stamp_ns)


def simulate_sequence(cfg: SimConfig | None, n_scans: int, seed: int) -> Iterator[Scan]:
    """``n_scans`` LiDAR scans along the scene's path, stamped ``start_stamp_ns + k / rate_hz``."""
    source = SimSource(cfg, n_scans, seed)
    for k in range(n_scans):
        yield source[k]


def simulate_depth_sequence(cfg: SimConfig | None, n_frames: int, seed: int) -> Iterator[DepthFrame]:
    """``n_frames`` organized depth frames along the same path as the LiDAR would take."""
    cfg = cfg or SimConfig()
    camera = cfg.depth_camera or default_depth_camera(cfg.scene)
    world = build_world(cfg, seed, duration_s=n_frames / camera.rate_hz)
    for k in range(n_frames):
        yield world.depth_frame(k)


class SimSource:
    """A lazy, indexable scan source (``len``, ``source[k]``, ``describe``) over a simulated sequence,
    for training data loaders: it pickles without its scene (Open3D objects do not pickle), and each
    process builds the scene on first use. ``source[k]`` equals the k-th scan of ``simulate_sequence``.
    """

    def __init__(self, cfg: SimConfig | None, n_scans: int, seed: int) -> None:
        if n_scans < 0:
            raise ValueError(f"n_scans must be >= 0, got {n_scans}")
        self.cfg = cfg or SimConfig()
        self.n_scans = n_scans
        self.seed = seed
        self._world: SimWorld | None = None

    @property
    def world(self) -> SimWorld:
        if self._world is None:
            lidar = self.cfg.lidar or default_lidar(self.cfg.scene)
            self._world = build_world(self.cfg, self.seed, duration_s=self.n_scans / lidar.rate_hz)
        return self._world

    def __len__(self) -> int:
        return self.n_scans

    def __getitem__(self, index: int) -> Scan:
        index = int(index)
        if index < 0:
            index += self.n_scans
        if not 0 <= index < self.n_scans:
            raise IndexError(f"scan index {index} out of range for a simulated sequence of {self.n_scans}")
        return self.world.lidar_scan(index)

    def describe(self, index: int) -> str:
        return f"sim:{self.cfg.scene}:seed{self.seed}#{index}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_world": None}

    def __repr__(self) -> str:
        return f"SimSource({self.cfg.scene}, {self.n_scans} scans, seed {self.seed})"


def with_lidar(cfg: SimConfig, **changes) -> SimConfig:
    """``cfg`` with its (default or given) LiDAR changed, e.g. ``with_lidar(cfg, beams=64)``."""
    lidar = dataclasses.replace(cfg.lidar or default_lidar(cfg.scene), **changes)
    return dataclasses.replace(cfg, lidar=lidar)


__all__ = [
    "SimConfig", "SimWorld", "SimSource", "build_world", "simulate_sequence", "simulate_depth_sequence",
    "default_lidar", "default_depth_camera", "default_speed", "with_lidar",
    "LoopPath", "StreetPath",
]
