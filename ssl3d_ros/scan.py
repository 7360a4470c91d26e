"""The one scan record every reader yields and every consumer (training, evaluation, node) takes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scan:
    """One sensor sweep.

    points: (N, 3) float32 x, y, z in metres, in ``frame_id``.
    fields: extra per-point arrays whose first dimension is N, by name. Conventional names:
        ``intensity`` (N,) float32 in the sensor's raw scale, ``ring`` (N,) integer beam index,
        ``rgb`` (N, 3) uint8, ``normal`` (N, 3) float32, ``time`` (N,) float32 seconds, ``range`` (N,).
    labels: optional (N,) int32 semantic label ids of the source dataset (class maps are applied
        by the consumer, so a reader never guesses a label space).
    intensity_scale: full-scale value of ``fields['intensity']`` when the source knows it
        (1.0 for KITTI, 255 for Ouster reflectivity, 65535 for photon counts), else None.
    source: where the scan came from (``path#index`` or ``bag:topic#index``), for logs and errors.
    """

    points: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    frame_id: str = ""
    stamp_ns: int = 0
    labels: np.ndarray | None = None
    intensity_scale: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        pts = np.asarray(self.points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"Scan.points must have shape (N, 3), got {pts.shape} ({self.source})")
        self.points = pts.astype(np.float32, copy=False)
        n = len(self.points)
        for name, values in self.fields.items():
            if len(values) != n:
                raise ValueError(f"Scan field {name!r} has {len(values)} rows for {n} points ({self.source})")
        if self.labels is not None:
            if len(self.labels) != n:
                raise ValueError(f"Scan labels have {len(self.labels)} rows for {n} points ({self.source})")
            self.labels = np.asarray(self.labels).reshape(n).astype(np.int32, copy=False)

    def __len__(self) -> int:
        return len(self.points)

    def select(self, index: np.ndarray) -> "Scan":
        """A new scan with the points chosen by a boolean mask or an index array, fields kept aligned."""
        return Scan(
            points=self.points[index],
            fields={k: v[index] for k, v in self.fields.items()},
            frame_id=self.frame_id,
            stamp_ns=self.stamp_ns,
            labels=None if self.labels is None else self.labels[index],
            intensity_scale=self.intensity_scale,
            source=self.source,
        )
