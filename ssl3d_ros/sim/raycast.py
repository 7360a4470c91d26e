"""Ray casting against a labelled scene mesh with Open3D's tensor ``RaycastingScene``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .meshes import SceneMesh


@dataclass(frozen=True)
class RayHits:
    """First hit of each ray; misses have ``distance = inf``, ``label = 0`` and ``hit = False``."""

    distance: np.ndarray  # (N,) float32 metres along the (unit) ray direction
    hit: np.ndarray  # (N,) bool
    label: np.ndarray  # (N,) int32 class id
    reflectivity: np.ndarray  # (N,) float32 material reflectivity, 0 on misses
    cos_incidence: np.ndarray  # (N,) float32 |cos| of the angle between ray and surface normal
    instance: np.ndarray  # (N,) int32 object id, 0 on misses
    penetration: np.ndarray  # (N,) float32 mean depth (m) of returns inside a porous surface, 0 on misses


class LabelledScene:
    """A ``RaycastingScene`` over one triangle soup plus its per-triangle label tables.

    The scene is built once (BVH) and then answers any number of ``cast`` calls.
    """

    def __init__(self, mesh: SceneMesh, threads: int = 0) -> None:
        import open3d as o3d  # optional dependency (extra "sim"): imported only when a scene is built

        self.mesh = mesh
        self.threads = threads
        self._o3d = o3d
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(mesh.vertices, np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(mesh.triangles, np.uint32)),
        )
        self._invalid = o3d.t.geometry.RaycastingScene.INVALID_ID

    def cast(self, origins: np.ndarray, directions: np.ndarray) -> RayHits:
        """Cast rays ``origins + t * directions`` ((N, 3) each, directions of unit length)."""
        rays = np.ascontiguousarray(np.concatenate([origins, directions], axis=-1), dtype=np.float32)
        result = self._scene.cast_rays(self._o3d.core.Tensor(rays), nthreads=self.threads)
        distance = result["t_hit"].numpy()
        primitive = result["primitive_ids"].numpy()
        hit = (primitive != self._invalid) & np.isfinite(distance)
        triangle = np.where(hit, primitive, 0).astype(np.int64)
        normals = result["primitive_normals"].numpy()
        cos_incidence = np.abs(np.einsum("nd,nd->n", normals, rays[:, 3:]))
        return RayHits(
            distance=np.where(hit, distance, np.inf).astype(np.float32),
            hit=hit,
            label=np.where(hit, self.mesh.triangle_class[triangle], 0).astype(np.int32),
            reflectivity=np.where(hit, self.mesh.triangle_reflectivity[triangle], 0.0).astype(np.float32),
            cos_incidence=np.where(hit, np.clip(cos_incidence, 0.0, 1.0), 0.0).astype(np.float32),
            instance=np.where(hit, self.mesh.triangle_instance[triangle], 0).astype(np.int32),
            penetration=np.where(hit, self.mesh.triangle_penetration[triangle], 0.0).astype(np.float32),
        )
