"""The one preprocessing path: Scan -> voxels -> batch -> encoder -> per-point features.

Training, evaluation and the ROS node all call :func:`preprocess`, so what a checkpoint was trained on
is exactly what runs on the robot; the :class:`PreprocessConfig` travels inside the checkpoint.

Steps, all vectorised in torch (no Python loop over points):

1. drop points that are non-finite (coordinates or any field a feature needs), exactly at the origin
   (the no-return placeholder of organised clouds), outside the range limits or the crop box;
2. voxel grid sampling: one point per voxel. At inference the kept point is the lowest input index
   of the voxel (int64 voxel keys, torch.unique, scatter-min of row numbers), so the same scan always
   gives the same voxels; in
   training the points are randomly permuted first, so each epoch sees a different representative;
3. optional cap on the number of voxels (``max_points``);
4. features of the kept points, normalised per sensor (intensity full scale 1, 255 or 65535).

Every input point keeps its place: ``point_voxel[i]`` is the voxel of input point ``i`` (or -1 when it
was dropped), so :func:`unpool` returns outputs in the input order, as the node needs to publish
per-point fields aligned with the incoming cloud.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ssl3d_ros.config import ConfigError
from ssl3d_ros.models.kernel_maps import COORD_OFFSET
from ssl3d_ros.models.structure import SparseTensor
from ssl3d_ros.normals import estimate_normals  # re-exported: part of the preprocessing API
from ssl3d_ros.scan import Scan

#: feature name -> number of channels it adds, in the order given by ``PreprocessConfig.features``.
FEATURE_CHANNELS: dict[str, int] = {"xyz": 3, "height": 1, "intensity": 1, "rgb": 3, "normal": 3, "range": 1,
                                    "constant": 1}

#: points farther than this from the frame origin on any axis (metres) are not measurements
#: (uninitialised driver buffers, 1e30 sentinels); dropping them also keeps voxel keys in int64.
MAX_ABS_COORD = 1.0e5
# Voxel indices either side of the origin the sparse kernels can address: ``collate`` shifts a scan's
# grid to start at 0, and the kernel-map keys hold an extent below COORD_OFFSET - 2 per axis, so a
# point farther than this many voxels from the origin is dropped (per point, never the whole frame).
GRID_HALF_EXTENT = (COORD_OFFSET - 2) // 2 - 1

#: quantile of kept-point z used as the ground level for the ``height`` feature; a low quantile rather
#: than the minimum so that one multipath return below the road does not shift every height.
GROUND_QUANTILE = 0.01

#: fixed seed of the voxel subset kept at inference when ``max_points`` caps a frame, so the node is
#: deterministic frame to frame.
INFERENCE_SUBSET_SEED = 0

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class PreprocessConfig:
    """How a scan becomes voxels and features; stored in every checkpoint.

    voxel_size: edge of the level-0 voxel grid in metres.
    crop_box: (xmin, ymin, zmin, xmax, ymax, zmax) in the scan frame, metres; points outside are dropped.
    min_range, max_range: keep points with min_range <= |p| <= max_range (max_range None: no limit).
    features: per-voxel input channels, in this order, among ``xyz`` (coordinates / coord_scale, see
        xyz_center), ``height`` (z above a robust ground level, / coord_scale), ``intensity``
        (raw / intensity scale, clipped to 0..1), ``rgb`` (0..1), ``normal`` (unit, see ``normals``),
        ``range`` (|p| / coord_scale), ``constant`` (1 on every voxel: the occupancy itself; it gives
        the stem's LayerNorm a fixed reference, without which a lone ``height`` channel would reach the
        network as its sign only).
    intensity_scale: full-scale value of the raw intensity, or "auto": the scan's own
        ``intensity_scale`` if the source knows it, else inferred from the field (uint8 -> 255;
        otherwise max <= 1 -> 1, max <= 255 -> 255, else 65535). The chosen value is returned in
        ``VoxelizedScan.intensity_scale``; pin it (``dataclasses.replace``) to freeze it for a stream.
    max_points: cap on voxels per scan (training: random subset; inference: fixed-seed subset); the
        points of dropped voxels get point_voxel -1. None: no cap.
    coord_scale: metres per unit of the xyz/height/range features (about 1 indoors, 20-50 outdoors),
        so the encoder's first layer sees values of order one.
    xyz_center: ``origin``: xyz features in the scan frame (the sensor, for sensor-frame scans);
        ``mean``: relative to the mean kept point (translation invariant, for world-frame scans).
    normals: ``auto``: the scan's ``normal`` field if it has one, else estimated; ``field``: require
        the field; ``estimate``: always estimate (PCA over the voxel's grid neighbours).
    normal_radius: neighbourhood half-width in voxels for estimated normals (1 -> 3x3x3 voxels).
    missing_features: what to do when a scan lacks a field a feature needs (intensity, rgb, normal
        with ``normals: field``): ``error`` (default: a silent zero channel would be a domain shift)
        or ``zero``.
    """

    voxel_size: float = 0.05
    crop_box: tuple[float, float, float, float, float, float] | None = None
    min_range: float = 0.0
    max_range: float | None = None
    features: tuple[str, ...] = ("xyz", "intensity")
    intensity_scale: Literal["auto"] | float = "auto"
    max_points: int | None = None
    coord_scale: float = 1.0
    xyz_center: Literal["origin", "mean"] = "origin"
    normals: Literal["auto", "field", "estimate"] = "auto"
    normal_radius: int = 1
    missing_features: Literal["error", "zero"] = "error"

    def __post_init__(self) -> None:
        # Checked here so that both direct construction and from_dict (checkpoints, YAML) validate.
        if not (isinstance(self.voxel_size, (int, float)) and self.voxel_size > 0 and math.isfinite(self.voxel_size)):
            raise ConfigError(f"preprocessing.voxel_size must be a positive number, got {self.voxel_size!r}")
        self.features = tuple(self.features)
        if not self.features:
            raise ConfigError("preprocessing.features must name at least one feature")
        unknown = [f for f in self.features if f not in FEATURE_CHANNELS]
        if unknown:
            raise ConfigError(f"preprocessing.features: unknown {unknown}; allowed: {list(FEATURE_CHANNELS)}")
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"preprocessing.features has duplicates: {list(self.features)}")
        if self.crop_box is not None:
            box = tuple(float(v) for v in self.crop_box)
            if len(box) != 6 or not all(box[i] < box[i + 3] for i in range(3)):
                raise ConfigError(
                    "preprocessing.crop_box must be (xmin, ymin, zmin, xmax, ymax, zmax) with min < max, "
                    f"got {self.crop_box}"
                )
            self.crop_box = box
        if self.min_range < 0:
            raise ConfigError(f"preprocessing.min_range must be >= 0, got {self.min_range}")
        if self.max_range is not None and self.max_range <= self.min_range:
            raise ConfigError(f"preprocessing.max_range ({self.max_range}) must exceed min_range ({self.min_range})")
        if self.max_range is not None and self.max_range > self.addressable_range:
            raise ConfigError(
                f"preprocessing.max_range ({self.max_range} m) exceeds the {self.addressable_range:.0f} m the sparse "
                f"kernels address at voxel_size {self.voxel_size} m ({GRID_HALF_EXTENT} voxels either side of the "
                "origin); lower max_range or raise voxel_size")
        if self.intensity_scale != "auto":
            scale = self.intensity_scale
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
                raise ConfigError(f"preprocessing.intensity_scale must be 'auto' or a positive number, got {scale!r}")
            self.intensity_scale = float(self.intensity_scale)
        if self.max_points is not None and self.max_points < 1:
            raise ConfigError(f"preprocessing.max_points must be >= 1 or null, got {self.max_points}")
        if not self.coord_scale > 0:
            raise ConfigError(f"preprocessing.coord_scale must be positive, got {self.coord_scale}")
        if self.normal_radius < 1:
            raise ConfigError(f"preprocessing.normal_radius must be >= 1, got {self.normal_radius}")


    @property
    def addressable_range(self) -> float:
        """Largest |coordinate| (metres) a kept point may have: the coordinate limit and the voxel grid's."""
        return min(MAX_ABS_COORD, self.voxel_size * GRID_HALF_EXTENT)


def feature_channels(cfg: PreprocessConfig) -> int:
    """Number of input channels ``preprocess`` produces: the encoder's ``in_channels``."""
    return sum(FEATURE_CHANNELS[name] for name in cfg.features)


@dataclass
class VoxelizedScan:
    """One scan after preprocessing. M voxels, N input points.

    grid_coord: (M, 3) int32 voxel indices floor(p / voxel_size) in the scan frame (may be negative;
        ``collate`` shifts each scan to non-negative).
    coord: (M, 3) float32 the kept point of each voxel, metres.
    feat: (M, C) float32 features, C = feature_channels(cfg).
    point_voxel: (N,) int64 voxel of every input point, -1 when the point was dropped.
    point_valid: (N,) bool, point_voxel >= 0.
    voxel_point: (M,) int64 input index of each voxel's kept point (labels: ``scan.labels[voxel_point]``).
    intensity_scale: the intensity full scale used (None when no intensity feature).
    points_over_budget: valid points dropped because their voxel was left out under ``max_points``.
    """

    grid_coord: torch.Tensor
    coord: torch.Tensor
    feat: torch.Tensor
    point_voxel: torch.Tensor
    point_valid: torch.Tensor
    voxel_point: torch.Tensor
    intensity_scale: float | None = None
    source: str = ""
    points_over_budget: int = 0

    def __len__(self) -> int:
        return self.grid_coord.shape[0]

    @property
    def num_points(self) -> int:
        return self.point_voxel.shape[0]


class MissingFieldError(ValueError):
    """A scan lacks a field its features need (an xyz-only scan for an ``intensity`` feature). Unlike a
    view that came out too small, this holds for every view of that scan: training can leave it out."""


def resolve_intensity_scale(scan: Scan, cfg: PreprocessConfig) -> float:
    """The full-scale intensity value used to normalise ``scan`` (see ``PreprocessConfig.intensity_scale``)."""
    if cfg.intensity_scale != "auto":
        return float(cfg.intensity_scale)
    if scan.intensity_scale:
        return float(scan.intensity_scale)
    values = scan.fields.get("intensity")
    if values is None:
        raise MissingFieldError(f"{scan.source or 'scan'}: no 'intensity' field to infer the intensity scale from")
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return 255.0
    # beyond float32's range is as unusable as Inf (_as_float32 makes it Inf, the point is dropped)
    finite = values[np.abs(values) <= _FLOAT32_MAX] if values.dtype.kind == "f" else values
    peak = float(finite.max()) if finite.size else 0.0
    if peak <= 1.0:
        return 1.0
    if peak <= 255.0:
        return 255.0
    return 65535.0


def preprocess(
    scan: Scan,
    cfg: PreprocessConfig,
    *,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> VoxelizedScan:
    """Crop, voxelize and featurise one scan (CPU tensors; move the collated batch to the device).

    ``training=False`` is deterministic: the kept point of a voxel is its lowest input index.
    ``training=True`` keeps a random point per voxel (and a random voxel subset under ``max_points``),
    drawn from ``generator`` (torch's global generator when None).
    """
    points = torch.from_numpy(_as_float32(scan.points))
    n = points.shape[0]
    fields = _feature_fields(scan, cfg)

    keep = _keep_mask(points, fields, cfg)
    candidates = keep.nonzero().squeeze(1)  # ascending input indices
    if training and candidates.numel() > 1:
        # Random representative per voxel: the earliest row of each voxel is kept, so permuting the
        # rows makes that a uniformly random point of the voxel.
        candidates = candidates.index_select(0, torch.randperm(candidates.numel(), generator=generator))

    grid = torch.floor(points.index_select(0, candidates) / cfg.voxel_size).to(torch.int64)
    voxel_of_candidate, kept_candidate = _first_per_voxel(grid)
    num_voxels = kept_candidate.numel()

    over_budget = 0
    if cfg.max_points is not None and num_voxels > cfg.max_points:
        subset_generator = generator if training else torch.Generator().manual_seed(INFERENCE_SUBSET_SEED)
        chosen = torch.randperm(num_voxels, generator=subset_generator)[: cfg.max_points]
        chosen = torch.sort(chosen).values  # keep voxels in grid-key order
        remap = torch.full((num_voxels,), -1, dtype=torch.int64)
        remap[chosen] = torch.arange(chosen.numel())
        voxel_of_candidate = remap.index_select(0, voxel_of_candidate)
        kept_candidate = kept_candidate.index_select(0, chosen)
        over_budget = int((voxel_of_candidate < 0).sum())

    point_voxel = torch.full((n,), -1, dtype=torch.int64)
    point_voxel.index_copy_(0, candidates, voxel_of_candidate)
    voxel_point = candidates.index_select(0, kept_candidate)
    grid_coord = grid.index_select(0, kept_candidate)
    coord = points.index_select(0, voxel_point)

    scale = resolve_intensity_scale(scan, cfg) if "intensity" in cfg.features and "intensity" in fields else None
    feat = _features(coord, grid_coord, voxel_point, fields, cfg, scale)
    return VoxelizedScan(
        grid_coord=grid_coord.to(torch.int32),
        coord=coord,
        feat=feat,
        point_voxel=point_voxel,
        point_valid=point_voxel >= 0,
        voxel_point=voxel_point,
        intensity_scale=scale,
        source=scan.source,
        points_over_budget=over_budget,
    )


def _feature_fields(scan: Scan, cfg: PreprocessConfig) -> dict[str, torch.Tensor]:
    """The raw per-point arrays the configured features read, as float32 tensors (N, ...)."""
    fields: dict[str, torch.Tensor] = {}
    for feature in cfg.features:
        if feature in ("intensity", "rgb"):
            name = feature
        elif feature == "normal" and (cfg.normals == "field" or (cfg.normals == "auto" and "normal" in scan.fields)):
            name = "normal"
        else:
            continue  # computed from coordinates (xyz, height, range, estimated normals)
        if name not in scan.fields:
            if cfg.missing_features == "zero":
                continue
            raise MissingFieldError(
                f"{scan.source or 'scan'}: feature {feature!r} needs field {name!r}, which the scan lacks "
                f"(fields: {sorted(scan.fields)}); set preprocessing.missing_features: zero to feed zeros"
            )
        values = np.asarray(scan.fields[name])
        if name == "rgb":
            values = _rgb_unit(values)
        width = int(np.prod(values.shape[1:]))  # explicit: reshape(-1) is ambiguous for an empty scan
        fields[name] = torch.from_numpy(_as_float32(values)).reshape(len(scan), width)
    return fields


def _as_float32(values: Any) -> np.ndarray:
    """``values`` as a contiguous, writable float32 array for ``torch.from_numpy``, without a warning: a
    read-only array (memory-mapped, a view of an immutable buffer) is copied, and floats beyond float32's
    range (a float64 intensity of 1e300) become +-Inf quietly, so ``_keep_mask`` drops the point."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and values.dtype.itemsize > 4:
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(values.astype(np.float32))  # a new array: writable
    out = np.ascontiguousarray(values, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def _rgb_unit(rgb: np.ndarray) -> np.ndarray:
    """Colours as 0..1: uint16 by 65535, other integers by 255, floats by 255 unless already <= 1."""
    if rgb.dtype.kind in "ui":
        full_scale = 65535.0 if rgb.dtype == np.uint16 else 255.0
        return rgb.astype(np.float32) / full_scale
    rgb = rgb.astype(np.float32, copy=False)
    finite = rgb[np.isfinite(rgb)]
    return rgb / 255.0 if finite.size and float(finite.max()) > 1.0 else rgb


def _keep_mask(points: torch.Tensor, fields: dict[str, torch.Tensor], cfg: PreprocessConfig) -> torch.Tensor:
    # Column by column: torch's reductions over a 3-wide axis (``.all(dim=1)``) cost ~1.7 ms each on an
    # HDL-64 frame; elementwise ops on the columns give the same mask several times faster.
    x, y, z = points.unbind(1)
    limit = cfg.addressable_range
    # One comparison per axis drops NaN (compares false), +-Inf, absurd and unaddressable coordinates.
    keep = (x.abs() <= limit) & (y.abs() <= limit) & (z.abs() <= limit)
    # Exactly (0, 0, 0) is the no-return placeholder of organised clouds (Ouster, depth cameras).
    keep &= (x != 0) | (y != 0) | (z != 0)
    for values in fields.values():
        for column in values.unbind(1):
            keep &= torch.isfinite(column)
    if cfg.min_range > 0 or cfg.max_range is not None:
        # float32 is exact enough: coordinates are below 1e5 m, and a range limit is metres, not microns
        sq_range = x * x + y * y + z * z
        if cfg.min_range > 0:
            keep &= sq_range >= cfg.min_range**2
        if cfg.max_range is not None:
            keep &= sq_range <= cfg.max_range**2
    if cfg.crop_box is not None:
        for column, lo, hi in zip((x, y, z), cfg.crop_box[:3], cfg.crop_box[3:]):
            keep &= (column >= lo) & (column <= hi)  # a Python scalar is compared in the column's float32
    return keep


def _first_per_voxel(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel id of every row of ``grid`` (ids in ascending key order) and the first row of each voxel.

    Rows are int64 voxel keys; ``torch.unique`` gives the voxel of each row and a scatter-min of row
    numbers the earliest row per voxel (the rows are in input order, or permuted for training).
    """
    count = grid.shape[0]
    if count == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    lo = grid.min(dim=0).values
    shifted = grid - lo
    extent = shifted.max(dim=0).values + 1
    if math.prod(float(e) for e in extent) < 2.0**62:
        key = (shifted[:, 0] * extent[1] + shifted[:, 1]) * extent[2] + shifted[:, 2]
        unique_keys, voxel_of_row = torch.unique(key, sorted=True, return_inverse=True)
    else:  # km-wide clouds at mm voxels: row-wise unique, same lexicographic order, slower
        unique_keys, voxel_of_row = torch.unique(shifted, dim=0, sorted=True, return_inverse=True)
    first_row = torch.full((unique_keys.numel(),), count, dtype=torch.int64)
    first_row.scatter_reduce_(0, voxel_of_row, torch.arange(count), reduce="amin")
    return voxel_of_row, first_row


def low_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) for a 1-D tensor and q <= 0.5, by partial
    selection of the lowest ranks: a full sort of a scan's heights cost ~4 ms, this ~0.2 ms."""
    if not 0.0 <= q <= 0.5 or values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"low_quantile needs a non-empty 1-D tensor and 0 <= q <= 0.5, got q={q}")
    position = q * (values.numel() - 1)
    lo = math.floor(position)
    hi = min(lo + 1, values.numel() - 1)
    lowest = torch.topk(values, hi + 1, largest=False, sorted=True).values
    return lowest[lo] + (lowest[hi] - lowest[lo]) * (position - lo)


def _features(
    coord: torch.Tensor,
    grid_coord: torch.Tensor,
    voxel_point: torch.Tensor,
    fields: dict[str, torch.Tensor],
    cfg: PreprocessConfig,
    intensity_scale: float | None,
) -> torch.Tensor:
    m = coord.shape[0]
    parts: list[torch.Tensor] = []
    for name in cfg.features:
        if name == "xyz":
            centre = coord.double().mean(dim=0).float() if (cfg.xyz_center == "mean" and m) else torch.zeros(3)
            parts.append((coord - centre) / cfg.coord_scale)
        elif name == "height":
            ground = low_quantile(coord[:, 2], GROUND_QUANTILE) if m else torch.zeros(())
            parts.append(((coord[:, 2] - ground) / cfg.coord_scale).unsqueeze(1))
        elif name == "range":
            parts.append((coord.norm(dim=1) / cfg.coord_scale).unsqueeze(1))
        elif name == "constant":
            parts.append(torch.ones(m, 1))
        elif name == "intensity":
            if "intensity" in fields:
                parts.append((fields["intensity"].index_select(0, voxel_point) / intensity_scale).clamp(0.0, 1.0))
            else:
                parts.append(torch.zeros(m, 1))
        elif name == "rgb":
            parts.append(fields["rgb"].index_select(0, voxel_point).clamp(0.0, 1.0) if "rgb" in fields else torch.zeros(m, 3))
        elif name == "normal":
            if "normal" in fields:
                normal = fields["normal"].index_select(0, voxel_point)
                parts.append(normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-12))
            elif cfg.normals == "field":
                parts.append(torch.zeros(m, 3))  # missing_features: zero
            else:
                parts.append(estimate_normals(coord, grid_coord, cfg.normal_radius))
    if not parts:
        return torch.zeros(m, 0)
    return torch.cat(parts, dim=1).to(torch.float32).contiguous()


def collate(scans: Sequence[VoxelizedScan], *, device: torch.device | str | None = None) -> SparseTensor:
    """Offset batching: concatenate voxels, batch index in coords[:, 0], grid shifted to >= 0 per scan."""
    if not scans:
        raise ValueError("collate needs at least one scan")
    coords, feats = [], []
    for b, vox in enumerate(scans):
        grid = vox.grid_coord.to(torch.int32)
        if grid.shape[0]:
            grid = grid - grid.min(dim=0).values
        batch = torch.full((grid.shape[0], 1), b, dtype=torch.int32)
        coords.append(torch.cat([batch, grid], dim=1))
        feats.append(vox.feat)
    coords_t = torch.cat(coords, dim=0)
    feats_t = torch.cat(feats, dim=0)
    if device is not None:
        coords_t, feats_t = coords_t.to(device), feats_t.to(device)
    return SparseTensor(feats=feats_t, coords=coords_t, batch_size=len(scans))


def batch_point_voxel(scans: Sequence[VoxelizedScan]) -> torch.Tensor:
    """``point_voxel`` of all scans concatenated, indexing the collated batch's voxels (-1 stays -1)."""
    parts, offset = [], 0
    for vox in scans:
        pv = vox.point_voxel
        parts.append(torch.where(pv >= 0, pv + offset, pv))
        offset += len(vox)
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def unpool(voxel_feats: torch.Tensor | np.ndarray | Any, point_voxel: torch.Tensor | np.ndarray,
           fill: float = 0.0) -> torch.Tensor | np.ndarray:
    """Per-point values (N, ...) in the input order from level-0 voxel values (M0, ...): every point
    takes its voxel's row; dropped points (``point_voxel`` -1) get ``fill``.

    The one voxel->point unpooling of the project (training, probes, the node). ``voxel_feats`` is a
    tensor (typically ``encoder.hypercolumn(output)``), a numpy array (the pipeline's host-side
    outputs; ``point_voxel`` then numpy too), or the encoder output itself (anything with ``levels``
    and ``parents``), whose levels are then all concatenated at level-0 resolution (the hypercolumn,
    as Sonata and MSM probe). ``point_voxel`` is ``VoxelizedScan.point_voxel`` (one scan) or
    ``batch_point_voxel`` (a batch).
    """
    if isinstance(voxel_feats, np.ndarray):
        point_voxel = np.asarray(point_voxel)
        if voxel_feats.shape[0] == 0:
            return np.full(point_voxel.shape[:1] + voxel_feats.shape[1:], fill, voxel_feats.dtype)
        per_point = voxel_feats[np.maximum(point_voxel, 0)]
        dropped = point_voxel < 0
        if dropped.any():
            per_point[dropped] = fill
        return per_point
    if not isinstance(voxel_feats, torch.Tensor):
        voxel_feats = torch.cat(
            [level.feats.index_select(0, parent) for level, parent in zip(voxel_feats.levels, voxel_feats.parents)],
            dim=1,
        )
    point_voxel = point_voxel.to(voxel_feats.device)
    if voxel_feats.shape[0] == 0:
        return voxel_feats.new_full((point_voxel.shape[0],) + tuple(voxel_feats.shape[1:]), fill)
    per_point = voxel_feats.index_select(0, point_voxel.clamp_min(0))
    dropped = (point_voxel < 0).nonzero().squeeze(1)
    if dropped.numel():  # touch only the dropped rows: the output is the big tensor of a frame
        per_point.index_fill_(0, dropped, fill)
    return per_point


__all__ = [
    "FEATURE_CHANNELS",
    "MissingFieldError",
    "PreprocessConfig",
    "VoxelizedScan",
    "batch_point_voxel",
    "collate",
    "estimate_normals",
    "feature_channels",
    "preprocess",
    "resolve_intensity_scale",
    "unpool",
]
