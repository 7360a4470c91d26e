"""Sensor paths through a scene: planar position and heading as smooth functions of time.

Paths are continuous in time so a spinning sensor can be placed at each column's firing time
(motion distortion) and a sequence has no jumps between scans.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StreetPath:
    """Driving along +x in a lane at ``lane_y``, weaving gently so scans are not pure translations."""

    start_x: float
    lane_y: float
    speed: float
    weave_amplitude: float = 0.0
    weave_wavelength: float = 60.0
    weave_phase: float = 0.0

    def pose(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(xy (n, 2), yaw (n,)) at times ``t`` seconds."""
        t = np.asarray(t, dtype=np.float64)
        x = self.start_x + self.speed * t
        k = 2.0 * np.pi / self.weave_wavelength
        y = self.lane_y + self.weave_amplitude * np.sin(k * x + self.weave_phase)
        yaw = np.arctan(self.weave_amplitude * k * np.cos(k * x + self.weave_phase))
        return np.stack([x, y], axis=-1), yaw

    def length_for(self, duration_s: float) -> tuple[float, float]:
        """The x interval covered in ``duration_s`` seconds."""
        return self.start_x, self.start_x + self.speed * duration_s


@dataclass(frozen=True)
class LoopPath:
    """Counter-clockwise laps of the ellipse (x/a)^2 + (y/b)^2 = 1 at constant speed."""

    semi_x: float
    semi_y: float
    speed: float
    start_angle: float = 0.0
    table_size: int = 4096

    def _arc_table(self) -> tuple[np.ndarray, np.ndarray]:
        theta = np.linspace(0.0, 2.0 * np.pi, self.table_size)
        ds = np.hypot(self.semi_x * np.sin(theta), self.semi_y * np.cos(theta))
        arc = np.concatenate([[0.0], np.cumsum(0.5 * (ds[1:] + ds[:-1]) * np.diff(theta))])
        return theta, arc

    def pose(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        theta_table, arc = self._arc_table()
        start = np.interp(self.start_angle % (2.0 * np.pi), theta_table, arc)
        s = (start + self.speed * t) % arc[-1]
        theta = np.interp(s, arc, theta_table)
        xy = np.stack([self.semi_x * np.cos(theta), self.semi_y * np.sin(theta)], axis=-1)
        yaw = np.arctan2(self.semi_y * np.cos(theta), -self.semi_x * np.sin(theta))
        return xy, yaw

    def outline(self, n: int = 256) -> np.ndarray:
        """(n, 2) points along the loop, for keeping furniture off the path."""
        theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        return np.stack([self.semi_x * np.cos(theta), self.semi_y * np.sin(theta)], axis=-1)


SensorPath = StreetPath | LoopPath


def world_from_sensor(xy: np.ndarray, yaw: float, height: float) -> np.ndarray:
    """4x4 pose of a level sensor at planar position ``xy`` with heading ``yaw``, ``height`` above z=0."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[:3, 3] = [xy[0], xy[1], height]
    return pose
