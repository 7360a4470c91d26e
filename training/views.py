"""Scene-level augmentations and multi-view construction, on numpy Scans (run in DataLoader workers).

A recipe declares named view groups (``global``, ``local``, ...), each with a count, a crop and an
augmentation strength. For one scan, every view is: crop around an occupied place near a shared
anchor (so views overlap and can be matched; cut again when it comes out too small) -> sensor-density
change (beam dropping, thinning) -> rotation about z, scaling, flips, jitter -> intensity jitter ->
the one preprocessing path -> voxels that remember their original coordinates. With a temporal partner frame (``temporal.py``) the recipe's
declared views are cut from that frame instead, around the same anchor in aligned coordinates.
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
    # probability that a view's points are thinned to the density of range_equalise_range: a point at
    # range r < R is kept with probability (r / R)^2, the inverse of a spinning LiDAR's density fall-off.
    # Without it, density says how far a surface is from the sensor, and a view-matching objective can
    # be solved from that alone (issue 27: PCA colours in rings around the sensor); ranges are from the
    # scan frame's origin, so it is meant for sensor-frame scans
    range_equalise: float = 0.0
    range_equalise_range: float = 20.0  # metres (R)
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


def range_equalised_keep(points: np.ndarray, reference: float) -> np.ndarray:
    """(N,) probability of keeping each point so that density no longer falls with range inside
    ``reference`` metres: (r / reference)^2, 1 beyond."""
    r = np.linalg.norm(np.asarray(points, dtype=np.float32), axis=1)
    return np.minimum((r / float(reference)) ** 2, 1.0)


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
    if aug.range_equalise > 0 and rng.random() < aug.range_equalise:
        keep &= rng.random(len(scan)) < range_equalised_keep(scan.points, aug.range_equalise_range)
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


def occupied_cells(points: np.ndarray, cell: float) -> np.ndarray:
    """Index of one point in every occupied ``cell``-sized voxel: drawing from these draws places
    uniformly over the surfaces, where drawing points favours the dense returns near the sensor."""
    keys = np.floor(points / cell).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first)


@dataclass
class MadeViews:
    """A sample's views plus what it cost: ``retries`` views re-cut because they came out smaller
    than ``min_voxels``; ``too_small`` says which view stayed too small after every retry (None: none)."""

    views: dict[str, list[ViewVoxels]]
    retries: int = 0
    too_small: str | None = None


class ViewMaker:
    """Builds a recipe's named views of one scan. Plain picklable object: lives in DataLoader workers.

    ``temporal_views``: per group, the indices of the views cut from the partner frame when a sample
    has one (``training/temporal.py``); their ``origin`` is the partner's points aligned into the
    anchor scan's frame, so recipes match them to the anchor's views by place as they match two crops.
    """

    def __init__(self, groups: dict[str, ViewGroupConfig], preprocessing: PreprocessConfig,
                 temporal_views: dict[str, tuple[int, ...]] | None = None) -> None:
        self.groups = groups
        self.preprocessing = preprocessing
        self.temporal_views = dict(temporal_views or {})

    def view(self, scan: Scan, center: np.ndarray, cfg: ViewGroupConfig, rng: np.random.Generator,
             frame_points: np.ndarray | None = None) -> ViewVoxels:
        """One view; ``frame_points`` are the scan's points in the frame the views share (default: its
        own), used for the crop and as the voxels' ``origin``; augmentation and preprocessing see the
        scan as its sensor recorded it."""
        keep = density_keep(scan, cfg.augment, rng)
        kept = scan.select(keep)
        shared = (scan.points if frame_points is None else frame_points)[keep]
        chosen = crop(shared, center, cfg, rng)
        kept, shared = kept.select(chosen), shared[chosen]
        full_scale = None
        if "intensity" in self.preprocessing.features and "intensity" in kept.fields:
            full_scale = resolve_intensity_scale(kept, self.preprocessing)
        augmented = transform(kept, cfg.augment, rng, full_scale)
        torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        vox = preprocess(augmented, self.preprocessing, training=True, generator=torch_gen)
        return ViewVoxels.from_voxelized(vox, shared)

    def make(self, scan: Scan, rng: np.random.Generator, partner=None, min_voxels: int = 0, retries: int = 0) -> MadeViews:
        """Every view of ``scan`` (and of ``partner``, a ``temporal.Partner``, for ``temporal_views``).

        The anchor is drawn uniformly over the occupied voxels; each crop centre is an occupied voxel
        within the group's ``center_jitter`` of it (in the partner's aligned points for its views).
        A view with fewer than ``min_voxels`` voxels is cut again around another centre, up to
        ``retries`` times per view, the k-th retry within ``max(center_jitter, 1 m) * 2**k`` of the
        anchor (so views still overlap, but a crop can leave a patch of isolated returns).
        """
        cell = self.preprocessing.voxel_size
        cells = scan.points[occupied_cells(scan.points, cell)]
        anchor = cells[rng.integers(len(cells))]
        aligned = None
        if partner is not None:
            aligned = partner.aligned_points()
            partner_cells = aligned[occupied_cells(aligned, cell)]
        out: dict[str, list[ViewVoxels]] = {}
        made = MadeViews(out)
        for name, cfg in self.groups.items():
            out[name] = []
            from_partner = set(self.temporal_views.get(name, ())) if partner is not None else set()
            for i in range(cfg.count):
                other = i in from_partner
                source, points, places = (partner.scan, aligned, partner_cells) if other else (scan, None, cells)
                for attempt in range(retries + 1):
                    # a retry looks twice as far each time: the anchor may sit on an isolated return
                    reach = cfg.center_jitter if attempt == 0 else max(cfg.center_jitter, 1.0) * 2.0**attempt
                    view = self.view(source, crop_center(places, anchor, reach, rng), cfg, rng, points)
                    if view.coord.shape[0] >= min_voxels:
                        break
                    if attempt < retries:
                        made.retries += 1
                    else:  # the sample is unusable: the remaining views would be wasted work
                        made.too_small = (f"view {name!r} has {view.coord.shape[0]} voxels (< data.min_voxels={min_voxels}) "
                                          f"after {retries} retries")
                        return made
                out[name].append(view)
        return made

    def __call__(self, scan: Scan, rng: np.random.Generator, partner=None) -> dict[str, list[ViewVoxels]]:
        return self.make(scan, rng, partner).views


def crop_center(places: np.ndarray, anchor: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """An occupied place within ``jitter`` (horizontal distance) of ``anchor``; the nearest one when
    none is that close (a partner frame that does not reach the anchor)."""
    d2 = np.sum((places[:, :2] - anchor[:2]) ** 2, axis=1)
    near = np.flatnonzero(d2 <= jitter * jitter)
    if len(near) == 0:
        return places[int(np.argmin(d2))]
    return places[near[rng.integers(len(near))]]


__all__ = ["AugmentConfig", "ViewGroupConfig", "ViewMaker", "MadeViews", "occupied_cells", "crop_center", "crop", "beam_ids", "density_keep", "transform", "rotation_z"]
