"""The sensor's pose on the robot: points from the input's frame into a gravity-aligned base frame.

A depth camera publishes in its optical frame (x right, y down, z forward). The model's ``height``
feature, its predictions, the occupancy grid's height band and the obstacle cloud all assume z up, so
:meth:`~ssl3d_ros.perception.PerceptionPipeline.process` moves the points into the base frame before
preprocessing, with the :class:`Mount` this module builds from the node's ``frame.*`` parameters or
from ``/tf_static`` (:class:`StaticTransforms`). Per-point outputs keep the input's frame, header,
order and coordinates; only what is computed from positions (model input, grid, obstacles) sees the
base frame. Pure numpy, no rclpy: the node feeds ``/tf_static`` messages in duck-typed.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

from ..scan import Scan
from .params import FrameConfig

# Rotation entries this close to -1, 0 or 1 are set to it: a mount at right angles (a camera's optical
# frame, rpy of +-pi/2) is then an exact signed permutation, so moving the points adds no rounding
# (cos(pi/2) is 6e-17, not 0, and would move a point at exactly 0 to the other side of a voxel border).
_SNAP = 1e-12


def _snapped(rotation: np.ndarray) -> np.ndarray:
    nearest = np.round(rotation)
    return np.where(np.abs(rotation - nearest) < _SNAP, nearest, rotation)


def rotation_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """3x3 rotation of fixed-axis roll (x), pitch (y), yaw (z), applied in that order: Rz @ Ry @ Rx,
    the convention of tf2's setRPY and static_transform_publisher."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return _snapped(rz @ ry @ rx)


def rotation_from_quaternion(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation of a quaternion in ROS order (x, y, z, w), normalised first. ValueError when it is zero."""
    q = np.array([x, y, z, w], np.float64)
    norm = float(np.linalg.norm(q))
    if not norm > 1e-6 or not math.isfinite(norm):
        raise ValueError(f"quaternion {[x, y, z, w]} is not a rotation (norm {norm})")
    x, y, z, w = q / norm
    return _snapped(np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]))


@dataclass(frozen=True)
class Mount:
    """base_frame <- sensor frame: ``p_base = rotation @ p_sensor + translation``; the translation is
    where the sensor is in the base frame (the origin its beams start from)."""

    rotation: np.ndarray  # (3, 3) float64
    translation: np.ndarray  # (3,) float64
    base_frame: str

    @classmethod
    def identity(cls, base_frame: str) -> "Mount":
        return cls(np.eye(3), np.zeros(3), base_frame)

    def then(self, inner: "Mount") -> "Mount":
        """This mount after ``inner`` (whose base frame is this one's sensor frame): base <- inner's sensor."""
        return Mount(_snapped(self.rotation @ inner.rotation), self.rotation @ inner.translation + self.translation,
                     self.base_frame)

    def inverse(self, base_frame: str) -> "Mount":
        """The sensor frame <- base frame transform, named ``base_frame`` (the sensor frame's name)."""
        rotation = self.rotation.T
        return Mount(rotation, -(rotation @ self.translation), base_frame)

    def points_to_base(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) float32 in the base frame. A point exactly at (0, 0, 0), an organized cloud's no-return
        placeholder that preprocessing drops, becomes NaN so that it is still dropped after the move."""
        points = np.asarray(points, np.float32)
        moved = points.astype(np.float64) @ self.rotation.T + self.translation
        moved[~points.any(axis=1)] = np.nan
        return moved.astype(np.float32)

    def scan_to_base(self, scan: Scan) -> Scan:
        """``scan`` in the base frame: points moved, a ``normal`` field rotated, every other field and the
        point order kept; ``frame_id`` becomes the base frame."""
        fields = dict(scan.fields)
        if "normal" in fields:
            fields["normal"] = (np.asarray(fields["normal"], np.float64) @ self.rotation.T).astype(np.float32)
        return replace(scan, points=self.points_to_base(scan.points), fields=fields, frame_id=self.base_frame)


def mount_from_config(frame: FrameConfig) -> Mount | None:
    """The mount the ``frame.*`` parameters give (validated by params.validate_frame_config); None when
    there is no base frame or the pose is to come from /tf_static."""
    if not frame.base_frame or frame.tf_static:
        return None
    rotation = (rotation_from_rpy(*frame.sensor_rpy) if frame.sensor_rpy
                else rotation_from_quaternion(*frame.sensor_quaternion))
    return Mount(rotation, np.asarray(frame.sensor_xyz, np.float64), frame.base_frame)


class TransformUnavailable(LookupError):
    """No /tf_static transform links the base frame and a cloud's frame yet: the frame is skipped and counted."""


class StaticTransforms:
    """The ``/tf_static`` tree (parent <- child transforms), answering base <- frame through any chain
    of them (up to a common root). Thread safe: the node adds messages on its executor thread while
    the inference thread looks transforms up."""

    MAX_DEPTH = 64

    def __init__(self) -> None:
        self._parent: dict[str, tuple[str, Mount]] = {}
        self._lock = threading.Lock()

    def add(self, parent: str, child: str, translation: Iterable[float], quaternion: Iterable[float]) -> None:
        """One transform: the pose of ``child`` in ``parent`` (translation xyz, quaternion xyzw)."""
        mount = Mount(rotation_from_quaternion(*quaternion), np.asarray(list(translation), np.float64), parent)
        with self._lock:
            self._parent[child.lstrip("/")] = (parent.lstrip("/"), mount)

    def add_message(self, msg: Any) -> int:
        """Every transform of a tf2_msgs/TFMessage (duck-typed); returns how many were taken. One that is
        not a rotation is left out, the others are kept."""
        taken = 0
        for t in msg.transforms:
            tr, q = t.transform.translation, t.transform.rotation
            try:
                self.add(t.header.frame_id, t.child_frame_id, (tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w))
            except ValueError:
                continue
            taken += 1
        return taken

    def _to_root(self, frame: str) -> tuple[str, Mount]:
        """(root, root <- frame) by walking up the parents."""
        frame = frame.lstrip("/")
        chain = Mount.identity(frame)
        with self._lock:
            for _ in range(self.MAX_DEPTH):
                if frame not in self._parent:
                    return frame, chain
                frame, step = self._parent[frame]
                chain = step.then(chain)
        return frame, chain  # a loop: the root found is not a common one, lookup fails

    def lookup(self, base_frame: str, frame: str) -> Mount:
        """base_frame <- frame; TransformUnavailable when no chain of received transforms links them."""
        base_root, root_from_base = self._to_root(base_frame)
        root, root_from_frame = self._to_root(frame)
        if root != base_root:
            raise TransformUnavailable(f"no /tf_static transform {base_frame!r} <- {frame!r} received yet")
        return root_from_base.inverse(base_frame.lstrip("/")).then(root_from_frame)


class FrameMounting:
    """Which mount a cloud gets, by its frame: none without a base frame (points stay in the input's frame),
    the parameters' fixed mount, or /tf_static's base <- frame (:attr:`static`, fed by the node)."""

    def __init__(self, base_frame: str = "", fixed: Mount | None = None, static: StaticTransforms | None = None) -> None:
        self.base_frame, self.fixed, self.static = base_frame, fixed, static

    @classmethod
    def from_config(cls, frame: FrameConfig) -> "FrameMounting":
        return cls(frame.base_frame, mount_from_config(frame), StaticTransforms() if frame.tf_static else None)

    def mount_for(self, frame_id: str) -> Mount | None:
        """The mount of a cloud in ``frame_id``; raises TransformUnavailable while /tf_static has not linked it."""
        if not self.base_frame:
            return None
        if self.static is None:
            return self.fixed
        if frame_id.lstrip("/") == self.base_frame.lstrip("/"):
            return Mount.identity(self.base_frame)
        return self.static.lookup(self.base_frame, frame_id)


__all__ = [
    "Mount", "FrameMounting", "StaticTransforms", "TransformUnavailable", "rotation_from_rpy", "rotation_from_quaternion",
    "mount_from_config",
]
