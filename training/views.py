"""Scene-level augmentations and multi-view construction, on numpy Scans (run in DataLoader workers).

A recipe declares named view groups (``global``, ``local``, ...), each with a count, a crop and an
augmentation strength. For one scan, every view is: crop around a centre near a shared anchor (so
views overlap and can be matched) -> sensor-density change (beam dropping, thinning) -> rotation
about z, scaling, flips, jitter -> intensity jitter -> the one preprocessing path -> voxels that
remember their original coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ssl3d_ros.preprocessing import PreprocessConfig, preprocess, resolve_intensity_scale
from ssl3d_ros.scan import Scan

from .voxels import ViewVoxels


@dataclass
class AugmentConfig:
    """Per-view random transforms. Ranges are (low, high); probabilities in 0..1."""

    rotate_z: float = 180.0  # degrees, uniform in +-rotate_z
    scale: tuple[float, float] = (0.9, 1.1)
    flip_x: float = 0.5  # probability of mirroring x (and of y, independently)
    jitter_sigma: float = 0.01  # metres
    jitter_clip: float = 0.05
    intensity_sigma: float = 0.05  # additive noise, in units of the intensity full scale
    intensity_scale: tuple[float, float] = (0.9, 1.1)  # multiplicative gain
    beam_drop: float = 0.2  # probability of keeping only a subset of beams (sensor-density change)
    beam_keep: tuple[float, float] = (0.5, 0.9)  # fraction of beams kept when dropping
    beams_estimate: int = 64  # beams assumed when the scan has no ``ring`` field (elevation bins)
    thin: tuple[float, float] = (1.0, 1.0)  # fraction of points kept (uniform thinning)
    # probability that a view's intensity is all zeros, as the node feeds for xyz-only sensors
    # (input.missing_intensity: zero): the encoder learns to do without it instead of meeting it cold
    intensity_drop: float = 0.0


@dataclass
class ViewGroupConfig:
    count: int = 1
    crop: Literal["ball", "box", "none"] = "ball"
    crop_points: int = 16000  # point budget: the nearest points to the crop centre (ball) or a subset (box)
    box_size: float = 20.0  # box crop edge, metres
    center_jitter: float = 2.0  # crop centre within this distance of the anchor (metres)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def crop(points: np.ndarray, center: np.ndarray, cfg: ViewGroupConfig, rng: np.random.Generator) -> np.ndarray:
    """Indices of the points a crop keeps (ball: the ``crop_points`` nearest to ``center``)."""
    n = len(points)
    if cfg.crop == "none":
        return np.arange(n) if n <= cfg.crop_points else np.sort(rng.choice(n, cfg.crop_points, replace=False))
    if cfg.crop == "box":
        inside = np.nonzero(np.all(np.abs(points[:, :2] - center[:2]) <= cfg.box_size / 2, axis=1))[0]
        if len(inside) > cfg.crop_points:
            inside = np.sort(rng.choice(inside, cfg.crop_points, replace=False))
        return inside
    if n <= cfg.crop_points:
        return np.arange(n)
    d2 = np.sum((points - center) ** 2, axis=1)
    return np.sort(np.argpartition(d2, cfg.crop_points - 1)[: cfg.crop_points])


def beam_ids(scan: Scan, beams_estimate: int) -> np.ndarray:
    """Beam (ring) of every point: the ``ring`` field, else elevation-angle bins."""
    if "ring" in scan.fields:
        return np.asarray(scan.fields["ring"]).astype(np.int64)
    p = scan.points
    elevation = np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1]) + 1e-6)
    lo, hi = float(elevation.min(initial=0.0)), float(elevation.max(initial=0.0))
    return np.floor((elevation - lo) / max(hi - lo, 1e-6) * (beams_estimate - 1e-6)).astype(np.int64)


def density_keep(scan: Scan, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of kept points after beam dropping and thinning (sensor-density changes)."""
    keep = np.ones(len(scan), dtype=bool)
    if aug.beam_drop > 0 and rng.random() < aug.beam_drop:
        beams = beam_ids(scan, aug.beams_estimate)
        n_beams = int(beams.max(initial=0)) + 1
        kept_beams = rng.random(n_beams) < rng.uniform(*aug.beam_keep)
        keep &= kept_beams[beams]
    lo, hi = aug.thin
    if hi < 1.0 or lo < 1.0:
        keep &= rng.random(len(scan)) < rng.uniform(lo, hi)
    if not keep.any():  # never produce an empty view
        keep[:] = True
    return keep


def transform(scan: Scan, aug: AugmentConfig, rng: np.random.Generator, intensity_full_scale: float | None = None) -> Scan:
    """Rotation about z, scaling, flips, jitter and intensity changes (a new Scan; input untouched).

    ``intensity_full_scale``: the scale preprocessing normalises this scan's intensity by (None: no
    intensity jitter). The jittered scan records it, so training and inference normalise alike.
    """
    m = rotation_z(np.deg2rad(rng.uniform(-aug.rotate_z, aug.rotate_z))) * np.float32(rng.uniform(*aug.scale))
    if rng.random() < aug.flip_x:
        m[:, 0] = -m[:, 0]
    if rng.random() < aug.flip_x:
        m[:, 1] = -m[:, 1]
    points = scan.points @ m.T
    if aug.jitter_sigma > 0:
        noise = rng.normal(0.0, aug.jitter_sigma, points.shape).astype(np.float32)
        points = points + np.clip(noise, -aug.jitter_clip, aug.jitter_clip)
    fields = dict(scan.fields)
    jitter_intensity = aug.intensity_sigma > 0 or tuple(aug.intensity_scale) != (1.0, 1.0)
    if "intensity" in fields and intensity_full_scale is not None and jitter_intensity:
        full = float(intensity_full_scale)
        raw = np.asarray(fields["intensity"], dtype=np.float32)
        jittered = raw * rng.uniform(*aug.intensity_scale) + rng.normal(0.0, aug.intensity_sigma * full, raw.shape)
        fields["intensity"] = np.clip(jittered, 0.0, full).astype(np.float32)
        intensity_scale = full
    else:
        intensity_scale = scan.intensity_scale
    if aug.intensity_drop > 0 and "intensity" in fields and rng.random() < aug.intensity_drop:
        fields["intensity"] = np.zeros(len(points), np.float32)
    if "normal" in fields:
        fields["normal"] = (np.asarray(fields["normal"], dtype=np.float32) @ m.T).astype(np.float32)
    return Scan(points.astype(np.float32), fields, scan.frame_id, scan.stamp_ns, scan.labels, intensity_scale, scan.source)


class ViewMaker:
    """Builds a recipe's named views of one scan. Plain picklable object: lives in DataLoader workers."""

    def __init__(self, groups: dict[str, ViewGroupConfig], preprocessing: PreprocessConfig) -> None:
        self.groups = groups
        self.preprocessing = preprocessing

    def anchor(self, scan: Scan, rng: np.random.Generator) -> np.ndarray:
        return scan.points[rng.integers(len(scan))]

    def view(self, scan: Scan, center: np.ndarray, cfg: ViewGroupConfig, rng: np.random.Generator) -> ViewVoxels:
        keep = density_keep(scan, cfg.augment, rng)
        kept = scan.select(keep)
        kept = kept.select(crop(kept.points, center, cfg, rng))
        full_scale = None
        if "intensity" in self.preprocessing.features and "intensity" in kept.fields:
            full_scale = resolve_intensity_scale(kept, self.preprocessing)
        augmented = transform(kept, cfg.augment, rng, full_scale)
        torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        vox = preprocess(augmented, self.preprocessing, training=True, generator=torch_gen)
        return ViewVoxels.from_voxelized(vox, kept.points)

    def __call__(self, scan: Scan, rng: np.random.Generator) -> dict[str, list[ViewVoxels]]:
        anchor = self.anchor(scan, rng)
        out: dict[str, list[ViewVoxels]] = {}
        for name, cfg in self.groups.items():
            out[name] = []
            for _ in range(cfg.count):
                offset = rng.normal(0.0, 1.0, 3).astype(np.float32)
                offset[2] = 0.0
                offset *= cfg.center_jitter / max(float(np.linalg.norm(offset)), 1e-6) * rng.random()
                out[name].append(self.view(scan, anchor + offset, cfg, rng))
        return out


__all__ = ["AugmentConfig", "ViewGroupConfig", "ViewMaker", "crop", "beam_ids", "density_keep", "transform", "rotation_z"]
