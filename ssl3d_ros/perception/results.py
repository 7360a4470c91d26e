"""What inference gives for one frame, in the input's point order: :class:`FrameResult` for a
:class:`~ssl3d_ros.scan.Scan`, :class:`CloudResult` for a PointCloud2 (with its coordinates and shape).

The pipeline makes them; the output encoders, the node and the offline replay read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FrameResult:
    """Per-point outputs of one scan, in the scan's point order (N points), plus per-voxel embeddings.

    ``class_id`` is ``NO_CLASS`` (255) where ``valid`` is False; ``probability`` is 0 and ``entropy`` 1
    (maximal uncertainty, as :func:`~ssl3d_ros.models.heads.segment_outputs`) there, and the embedding rows are zeros. ``entropy`` is
    normalised by ln(K), so it lies in 0..1. Arrays are None for outputs that were not requested;
    ``novelty`` is None without a novelty reference or without a valid voxel.
    """

    valid: np.ndarray  # (N,) bool
    point_voxel: np.ndarray  # (N,) int64, -1 for dropped points
    class_id: np.ndarray | None = None  # (N,) uint8
    probability: np.ndarray | None = None  # (N,) float32, softmax probability of class_id
    entropy: np.ndarray | None = None  # (N,) float32, softmax entropy / ln(K)
    embedding: np.ndarray | None = None  # (N, D) float32
    voxel_coord: np.ndarray | None = None  # (M, 3) float32, one kept point per voxel (metres, the scan's frame)
    voxel_embedding: np.ndarray | None = None  # (M, D) float32
    points_over_budget: int = 0  # valid points left out because their voxel was over preprocessing.max_points
    novelty: float | None = None  # the frame's novelty score (1.0 = the reference's 95th-percentile frame)
    novelty_voxel_share: float | None = None  # share of the frame's voxels scoring over 1.0
    point_novelty: np.ndarray | None = None  # (N,) float32 per point (its voxel's score), 0 where invalid
    timings_ms: dict[str, float] = field(default_factory=dict)  # preprocess, inference (novelty in it), postprocess
    # Where the model, the grid and the obstacles saw the points (frame.base_frame, perception/mounting.py):
    base_points: np.ndarray | None = None  # (N, 3) float32 in base_frame; None: the scan's own points
    base_frame: str = ""  # '' = the scan's own frame
    sensor_origin: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) where beams start, base frame

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())


@dataclass
class CloudResult:
    """A FrameResult in the order of a PointCloud2's ``height*width`` points, with their coordinates."""

    result: FrameResult
    xyz: np.ndarray  # (height*width, 3) float32, as in the message (non-finite points included)
    height: int
    width: int
    decode_ms: float
    intensity_missing: bool = False  # the model's intensity was fed as zeros (parameter input.missing_intensity)

    @property
    def base_xyz(self) -> np.ndarray:
        """(height*width, 3) float32 in the base frame the model saw (``xyz`` itself without a base frame)."""
        return self.xyz if self.result.base_points is None else self.result.base_points


__all__ = ["FrameResult", "CloudResult"]
