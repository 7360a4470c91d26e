"""Triangle-mesh primitives as plain numpy arrays, and the labelled scene mesh built from them.

Scenes are assembled from a few primitives (boxes, cylinders, spheres, height fields) moved into
place with a yaw and a translation. Every part carries a class id, a material reflectivity and an
instance id *per triangle*, so the whole scene becomes one triangle soup and a ray hit's
``primitive_id`` indexes straight into those tables (one BVH build, one lookup, no per-geometry
bookkeeping).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mesh:
    """vertices (V, 3) float64 metres; triangles (T, 3) int64 vertex indices."""

    vertices: np.ndarray
    triangles: np.ndarray


def box(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> Mesh:
    """Axis-aligned box between corners ``lo`` and ``hi`` (12 triangles)."""
    lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
    corner_bits = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=float)
    vertices = lo_a + corner_bits * (hi_a - lo_a)
    # two triangles per face; corner index = x + 2y + 4z
    triangles = np.array([
        [0, 2, 1], [1, 2, 3],  # z = lo
        [4, 5, 6], [5, 7, 6],  # z = hi
        [0, 1, 4], [1, 5, 4],  # y = lo
        [2, 6, 3], [3, 6, 7],  # y = hi
        [0, 4, 2], [2, 4, 6],  # x = lo
        [1, 3, 5], [3, 7, 5],  # x = hi
    ], dtype=np.int64)
    return Mesh(vertices, triangles)


def cylinder(radius: float, z0: float, z1: float, segments: int = 12) -> Mesh:
    """Closed cylinder around the z axis from ``z0`` to ``z1``."""
    angle = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    ring = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    bottom = np.column_stack([ring, np.full(segments, z0)])
    top = np.column_stack([ring, np.full(segments, z1)])
    vertices = np.vstack([bottom, top, [[0.0, 0.0, z0], [0.0, 0.0, z1]]])
    i = np.arange(segments)
    j = (i + 1) % segments
    side = np.concatenate([np.stack([i, j, i + segments], 1), np.stack([j, j + segments, i + segments], 1)])
    cap_bottom = np.stack([np.full(segments, 2 * segments), j, i], 1)
    cap_top = np.stack([np.full(segments, 2 * segments + 1), i + segments, j + segments], 1)
    return Mesh(vertices, np.concatenate([side, cap_bottom, cap_top]).astype(np.int64))


def sphere(radius: float, rings: int = 6, segments: int = 12) -> Mesh:
    """UV sphere centred at the origin (coarse on purpose: crowns and heads, not optics)."""
    polar = np.linspace(0.0, np.pi, rings + 1)[1:-1]
    azimuth = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    p, a = np.meshgrid(polar, azimuth, indexing="ij")
    body = radius * np.stack([np.sin(p) * np.cos(a), np.sin(p) * np.sin(a), np.cos(p)], -1).reshape(-1, 3)
    vertices = np.vstack([body, [[0.0, 0.0, radius], [0.0, 0.0, -radius]]])
    north, south = len(body), len(body) + 1
    r = np.arange(rings - 2)[:, None]
    s = np.arange(segments)[None, :]
    a00 = (r * segments + s).ravel()
    a01 = (r * segments + (s + 1) % segments).ravel()
    a10 = a00 + segments
    a11 = a01 + segments
    quads = np.concatenate([np.stack([a00, a10, a01], 1), np.stack([a01, a10, a11], 1)])
    first = np.arange(segments)
    last = (rings - 2) * segments + first
    caps = np.concatenate([
        np.stack([np.full(segments, north), first, (first + 1) % segments], 1),
        np.stack([np.full(segments, south), (rings - 2) * segments + (first + 1) % segments, last], 1),
    ])
    return Mesh(vertices, np.concatenate([quads, caps]).astype(np.int64))


def height_field(xs: np.ndarray, ys: np.ndarray, heights: np.ndarray) -> Mesh:
    """Grid surface z = heights[i, j] at (xs[i], ys[j]); two triangles per cell."""
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    vertices = np.stack([gx, gy, heights], -1).reshape(-1, 3)
    nx, ny = len(xs), len(ys)
    i, j = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="ij")
    v00 = (i * ny + j).ravel()
    v01, v10 = v00 + 1, v00 + ny
    v11 = v10 + 1
    triangles = np.concatenate([np.stack([v00, v10, v01], 1), np.stack([v01, v10, v11], 1)])
    return Mesh(vertices, triangles.astype(np.int64))


def rotation_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def placed(mesh: Mesh, translation=(0.0, 0.0, 0.0), yaw: float = 0.0, rotation: np.ndarray | None = None,
           scale=(1.0, 1.0, 1.0)) -> Mesh:
    """The mesh scaled, rotated (``rotation`` then ``yaw`` about z) and translated."""
    v = mesh.vertices * np.asarray(scale, float)
    if rotation is not None:
        v = v @ rotation.T
    if yaw:
        v = v @ rotation_z(yaw).T
    return Mesh(v + np.asarray(translation, float), mesh.triangles)


def merged(meshes: list[Mesh]) -> Mesh:
    """One mesh holding all parts (parts keep their own orientation; indices are offset)."""
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return Mesh(
        np.concatenate([m.vertices for m in meshes]),
        np.concatenate([m.triangles + o for m, o in zip(meshes, offsets)]),
    )


@dataclass(frozen=True)
class SceneMesh:
    """The scene as one triangle soup with per-triangle class id, reflectivity (0..1), instance id and
    penetration depth (metres; > 0 for porous surfaces such as foliage, whose returns come from
    inside the volume rather than from its hull)."""

    vertices: np.ndarray  # (V, 3) float32
    triangles: np.ndarray  # (T, 3) uint32
    triangle_class: np.ndarray  # (T,) int32
    triangle_reflectivity: np.ndarray  # (T,) float32
    triangle_instance: np.ndarray  # (T,) int32
    triangle_penetration: np.ndarray  # (T,) float32

    @property
    def class_ids(self) -> np.ndarray:
        return np.unique(self.triangle_class)


class SceneBuilder:
    """Collects labelled parts; ``new_instance()`` groups the parts of one object (car, tree, ...)."""

    def __init__(self) -> None:
        self._meshes: list[Mesh] = []
        self._class: list[int] = []
        self._reflectivity: list[float] = []
        self._instance: list[int] = []
        self._penetration: list[float] = []
        self._next_instance = 0
        self._current = 0

    def new_instance(self) -> int:
        self._next_instance += 1
        self._current = self._next_instance
        return self._current

    def add(self, mesh: Mesh, class_id: int, reflectivity: float, penetration: float = 0.0) -> None:
        self._meshes.append(mesh)
        self._penetration.append(float(penetration))
        self._class.append(class_id)
        self._reflectivity.append(float(np.clip(reflectivity, 0.0, 1.0)))
        self._instance.append(self._current)

    def build(self) -> SceneMesh:
        if not self._meshes:
            raise ValueError("empty scene: no parts were added")
        counts = np.array([len(m.triangles) for m in self._meshes])
        whole = merged(self._meshes)
        return SceneMesh(
            vertices=whole.vertices.astype(np.float32),
            triangles=whole.triangles.astype(np.uint32),
            triangle_class=np.repeat(np.array(self._class, np.int32), counts),
            triangle_reflectivity=np.repeat(np.array(self._reflectivity, np.float32), counts),
            triangle_instance=np.repeat(np.array(self._instance, np.int32), counts),
            triangle_penetration=np.repeat(np.array(self._penetration, np.float32), counts),
        )
