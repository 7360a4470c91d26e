"""The synthetic scan the pipeline warms up on before the first real one."""
from __future__ import annotations

import numpy as np

from ..scan import Scan


def warm_up_scan(points: int, max_range: float, seed: int = 0) -> Scan:
    """A synthetic ring of ``points`` points with every field a feature may read (intensity, rgb,
    normal), so any checkpoint's preprocessing accepts it: the warm-up input."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(3.0, max(4.0, min(max_range, 50.0) * 0.9), points)
    angle = rng.uniform(0, 2 * np.pi, points)
    xyz = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-1.5, 1.5, points)], 1)
    normal = np.zeros((points, 3), np.float32)
    normal[:, 2] = 1.0
    return Scan(
        points=xyz.astype(np.float32),
        fields={
            "intensity": rng.uniform(0, 1, points).astype(np.float32),
            "rgb": rng.integers(0, 256, (points, 3), dtype=np.uint8),
            "normal": normal,
        },
        intensity_scale=1.0,
        source="warm-up",
    )


__all__ = ["warm_up_scan"]
