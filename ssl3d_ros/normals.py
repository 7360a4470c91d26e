"""Surface normals of voxelized scans for the ``normal`` input feature (PCA over grid neighbours)."""
from __future__ import annotations

import math

import torch


def estimate_normals(coord: torch.Tensor, grid_coord: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Unit normals of voxel points by PCA over the occupied voxels within ``radius`` grid cells.

    ``grid_coord`` must be unique per row. Neighbours are found by one binary search of the K =
    (2r+1)^3 neighbour keys of every voxel in the sorted voxel keys, O(M K log M). The normal is the
    eigenvector of the smallest covariance eigenvalue, oriented towards the frame origin (the sensor
    in a sensor-frame scan). Voxels with fewer than 3 neighbours (a normal is undefined)
    get zeros.
    """
    m = coord.shape[0]
    if m == 0:
        return torch.zeros(0, 3)
    grid = grid_coord.to(torch.int64)
    lo = grid.min(dim=0).values - radius
    extent = grid.max(dim=0).values + radius - lo + 1
    if math.prod(float(e) for e in extent) >= 2.0**62:
        raise ValueError(f"estimate_normals: grid extent {extent.tolist()} voxels is too large for int64 keys")

    def key_of(g: torch.Tensor) -> torch.Tensor:
        s = g - lo
        return (s[..., 0] * extent[1] + s[..., 1]) * extent[2] + s[..., 2]

    keys = key_of(grid)
    sorted_keys, order = torch.sort(keys)
    steps = torch.arange(-radius, radius + 1)
    offsets = torch.cartesian_prod(steps, steps, steps)  # (K, 3)
    # Keys are linear in the grid coordinate and the extent is padded by the radius, so a neighbour's
    # key is the voxel's key plus a per-offset constant. All lookups in one binary search.
    neighbour_keys = (keys.unsqueeze(1) + key_of(offsets + lo).unsqueeze(0)).view(-1)
    pos = torch.searchsorted(sorted_keys, neighbour_keys).clamp_max(m - 1)
    found = (sorted_keys.index_select(0, pos) == neighbour_keys).view(m, -1)
    neighbours = order.index_select(0, pos)
    # Relative to the centre point, so float32 keeps millimetres at 100 m coordinates.
    rel = coord.index_select(0, neighbours).view(m, -1, 3) - coord.unsqueeze(1)
    rel = rel * found.unsqueeze(2)
    count = found.sum(dim=1).to(torch.float32)
    inv_count = 1.0 / count.clamp_min(1.0)
    mean = rel.sum(dim=1) * inv_count.unsqueeze(1)
    cov = torch.bmm(rel.transpose(1, 2), rel) * inv_count.view(-1, 1, 1) - mean.unsqueeze(2) * mean.unsqueeze(1)
    normal, defined = _least_spread_direction(cov)
    flip = (normal * coord).sum(dim=1) > 0  # pointing away from the origin
    normal = torch.where(flip.unsqueeze(1), -normal, normal)
    normal = torch.where((defined & (count >= 3)).unsqueeze(1), normal, torch.zeros(()))
    return normal.contiguous()


def _least_spread_direction(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit eigenvector of the smallest eigenvalue of symmetric (M, 3, 3) matrices, in closed form.

    Eigenvalues by the trigonometric method for symmetric 3x3 matrices; the eigenvector is the
    largest cross product of two rows of (A - lambda_min I). A batched ``torch.linalg.eigh`` costs
    ~100x more for the ~1e5 tiny matrices of a frame. ``defined`` is False where the direction is
    not unique (isotropic spread, or points on a line: no surface normal).
    """
    a = cov.double()
    a00, a11, a22 = a[:, 0, 0], a[:, 1, 1], a[:, 2, 2]
    a01, a02, a12 = a[:, 0, 1], a[:, 0, 2], a[:, 1, 2]
    q = (a00 + a11 + a22) / 3.0
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    p2 = (a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2.0 * p1
    p = torch.sqrt(p2 / 6.0)
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    b00, b11, b22 = (a00 - q) / safe_p, (a11 - q) / safe_p, (a22 - q) / safe_p
    b01, b02, b12 = a01 / safe_p, a02 / safe_p, a12 / safe_p
    det_b = b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = torch.acos((det_b / 2.0).clamp(-1.0, 1.0)) / 3.0
    smallest = q + 2.0 * p * torch.cos(phi + 2.0 * math.pi / 3.0)
    shifted = a - smallest.view(-1, 1, 1) * torch.eye(3, dtype=a.dtype)
    r0, r1, r2 = shifted[:, 0], shifted[:, 1], shifted[:, 2]
    candidates = torch.stack([torch.linalg.cross(r0, r1), torch.linalg.cross(r0, r2), torch.linalg.cross(r1, r2)], dim=1)
    norms = candidates.norm(dim=2)
    best_norm, best = norms.max(dim=1)
    vector = candidates[torch.arange(a.shape[0]), best] / best_norm.clamp_min(1e-300).unsqueeze(1)
    scale = p2.sqrt()  # |A - qI|: relative threshold for "no unique direction"
    defined = (p > 0) & (best_norm > 1e-6 * scale * scale)
    return vector.to(cov.dtype), defined


__all__ = ["estimate_normals"]
