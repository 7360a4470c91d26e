"""What the node publishes, as pure functions of one frame's result (no rclpy, no torch).

Output selection (:class:`OutputSelection`: which outputs have subscribers), encoding of the
per-point clouds (:func:`encode_outputs`, layouts in the README's topic table), class colours, the
occupancy grid and the obstacle cloud a costmap consumes. Per-point clouds keep the input's points;
the grid and the obstacles are made from the points in the base frame (``CloudResult.base_xyz``). The node turns the encoded clouds into messages and publishes them; the replay
and the tests call the same functions, so what is published is checkable without DDS. Whether a
message fits the transport is :mod:`.transport`.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..codec import EncodedCloud, encode_cloud
from ..config import ConfigError
from ..labels import NO_CLASS
from .params import NodeConfig, OccupancyConfig
from .results import CloudResult

FREE, OCCUPIED, UNKNOWN = 0, 100, -1  # nav_msgs/OccupancyGrid cell values
OUTPUTS = ("segmentation", "embeddings", "visualization", "occupancy", "obstacles")
#: outputs in the base frame (parameter frame.base_frame): the node stamps them with the input's stamp
#: and the base frame's name; every other output carries the input's header as it came.
BASE_FRAME_OUTPUTS = ("occupancy", "obstacles")

# Class names treated as traversable ground when no obstacle list is given (SemanticKITTI, nuScenes,
# ScanNet and this project's simulated scenes use these words).
GROUND_CLASS_NAMES = frozenset(
    {"unlabeled", "ignore", "road", "sidewalk", "parking", "other-ground", "terrain", "ground", "floor",
     "lane-marking", "driveable_surface", "flat", "grass"}
)

# Fallback palette (Tableau 20, then repeated darker): used when neither the parameters nor the
# checkpoint give a colour for a class.
_PALETTE = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120],
     [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199],
     [219, 219, 141], [158, 218, 229]],
    dtype=np.uint8,
)
INVALID_COLOR = (0, 0, 0)


def parse_colors(hex_colors: list[str]) -> np.ndarray:
    out = np.zeros((len(hex_colors), 3), np.uint8)
    for i, c in enumerate(hex_colors):
        c = c.lstrip("#")
        out[i] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
    return out


def class_color_table(colors: np.ndarray, num_classes: int) -> np.ndarray:
    """(256, 3) uint8 lookup by class_id: given colours, palette for the rest, black for NO_CLASS (invalid)."""
    table = np.zeros((256, 3), np.uint8)
    table[:num_classes] = _PALETTE[np.arange(num_classes) % len(_PALETTE)]
    n = min(len(colors), num_classes)
    table[:n] = colors[:n]
    table[NO_CLASS] = INVALID_COLOR
    return table


def colorize(class_id: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colour of each point's class."""
    return table[class_id]


# --------------------------------------------------------------------------------------------------
# Occupancy grid (pure function)
# --------------------------------------------------------------------------------------------------


@dataclass
class OccupancyGrid:
    """A 2-D grid in the base frame, nav_msgs/OccupancyGrid conventions: row-major, row = y index."""

    data: np.ndarray  # (height, width) int8: 100 occupied, 0 free (a beam crossed it or ground), -1 unknown
    resolution: float
    origin_x: float
    origin_y: float

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0])


# Hits farther than this many cells from the grid's corner are ignored (2**28 cells: 2,700 km at 1 cm),
# so that cell indices stay exact integers.
_MAX_CELLS = 1 << 28


def occupancy_grid(
    xyz: np.ndarray,
    class_id: np.ndarray,
    valid: np.ndarray,
    obstacle: np.ndarray,
    cfg: OccupancyConfig,
    sensor_xy: tuple[float, float] | np.ndarray = (0.0, 0.0),
) -> OccupancyGrid:
    """The grid of one frame, in the frame of ``xyz`` (the base frame): cells holding obstacle-class
    points are occupied; with ``cfg.ray_cast`` every cell a beam crosses from ``sensor_xy`` to a hit is
    free (:func:`free_along_beams`), else only cells holding ground points are; occupied wins over free,
    and cells nothing reached are unknown.

    ``obstacle`` is a (256,) bool lookup by class id. Invalid points and points outside the z band are
    ignored; points outside the grid only clear the cells their beams cross inside it.
    """
    width = int(math.ceil(cfg.size_x / cfg.resolution))
    height = int(math.ceil(cfg.size_y / cfg.resolution))
    grid = np.full(height * width, UNKNOWN, np.int8)
    # Invalid points (NaN, Inf, 1e38 m) overflow or compare as NaN here: quietly, since `hit` drops them.
    with np.errstate(over="ignore", invalid="ignore"):
        fx = (xyz[:, 0] - cfg.origin_x) / cfg.resolution  # position in cells
        fy = (xyz[:, 1] - cfg.origin_y) / cfg.resolution
        hit = valid & (xyz[:, 2] >= cfg.z_min) & (xyz[:, 2] <= cfg.z_max) & (np.abs(fx) < _MAX_CELLS) & (np.abs(fy) < _MAX_CELLS)
    ix, iy = np.floor(fx[hit]).astype(np.int64), np.floor(fy[hit]).astype(np.int64)
    if cfg.ray_cast:
        sensor = ((sensor_xy[0] - cfg.origin_x) / cfg.resolution, (sensor_xy[1] - cfg.origin_y) / cfg.resolution)
        grid[free_along_beams(fx[hit], fy[hit], sensor, width, height)] = FREE
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    cell = iy[inside] * width + ix[inside]
    is_obstacle = obstacle[class_id[hit][inside]]
    grid[cell] = FREE
    grid[cell[is_obstacle]] = OCCUPIED  # last: one obstacle point makes the cell occupied
    return OccupancyGrid(grid.reshape(height, width), cfg.resolution, cfg.origin_x, cfg.origin_y)


def free_along_beams(hx: np.ndarray, hy: np.ndarray, sensor: tuple[float, float], width: int, height: int) -> np.ndarray:
    """(height * width,) bool, row-major: the grid cells that beams cross from ``sensor`` to the hits
    ``(hx, hy)``, all in cell units from the grid's corner (the sensor and the hits may lie outside it).

    Per cell rather than per beam, so the cost is bounded by the grid and the points, not by the beams'
    lengths (sampling every beam made the default grid 3-4x dearer per HDL-64 frame). The hits are
    binned by bearing from the sensor, in bins narrow enough that neighbouring beams are at most an
    eighth of a cell apart inside the grid, and each bin keeps its farthest hit (a nearer hit in the same
    bin lies on the way, give or take a fraction of a cell). A cell is free when a bin within the bearings it spans, seen from the sensor,
    reaches past the cell's nearest point by more than half a cell: every beam stops half a cell short of
    its hit, so it never frees a cell beside the hit. The cell holding the sensor is free as soon as any
    beam exists. Which bins each cell spans depends only on the sensor's position in the grid (fixed for
    a mounted sensor), so it is computed once (:func:`_beam_cells`) and each frame takes the maximum over
    a cell's bins from a sparse table of the bins' reaches: two lookups per cell.
    """
    if hx.size == 0:
        return np.zeros(width * height, bool)
    cells = _beam_cells(float(sensor[0]), float(sensor[1]), int(width), int(height))
    dx, dy = hx - np.float32(sensor[0]), hy - np.float32(sensor[1])
    bearing = (((np.arctan2(dy, dx) + np.float32(math.pi)) * np.float32(cells.bins / (2 * math.pi))).astype(np.int64)
               % cells.bins)
    reach = np.full(cells.bins, -np.inf, np.float32)  # per bin: the farthest hit, less half a cell
    np.maximum.at(reach, bearing, np.maximum(np.hypot(dx, dy) - np.float32(0.5), np.float32(0.0)))
    # table[j, i] = max(reach over bins i .. i + 2**j - 1), bins taken twice round so spans may wrap
    table = np.full((cells.levels, 2 * cells.bins), -np.inf, np.float32)
    table[0] = np.concatenate([reach, reach])
    for j in range(1, cells.levels):
        half = 1 << (j - 1)
        table[j, : 2 * cells.bins - half] = np.maximum(table[j - 1, : 2 * cells.bins - half], table[j - 1, half:])
    flat = table.ravel()
    return np.maximum(flat[cells.first], flat[cells.second]) > cells.nearest


@dataclass(frozen=True)
class _BeamCells:
    """Per cell of one grid seen from one sensor position: the bearing bins it spans as two overlapping
    sparse-table entries (flat indices ``first`` and ``second``), and its nearest point's distance."""

    bins: int
    levels: int
    first: np.ndarray  # (cells,) int32 (levels * 2 * bins < 2**31)
    second: np.ndarray  # (cells,) int32
    nearest: np.ndarray  # (cells,) float32; -1 for the cell holding the sensor


# A node's sensor sits still in its base frame (a static mount), so one entry is used; the grid's first
# frame pays the set-up (40 ms at the default 200 x 200 cells; 4 s, and 48 MB kept, at 2,000 x 2,000).
@functools.lru_cache(maxsize=2)
def _beam_cells(sx: float, sy: float, width: int, height: int) -> _BeamCells:
    reach = max(math.hypot(max(sx, width - sx), max(sy, height - sy)), 1.0)  # to the grid's farthest corner
    # An arc of an eighth of a cell at the farthest corner (at most 65,536 bins: a reach of 1,300 cells).
    # Bins cost nearly nothing here; with half-cell arcs a bin overlapping a cell's bearings by a sliver
    # freed 2-10 % more cells than beams sampled one by one (KITTI scans), with eighths 1.5-6 %.
    bins = int(min(math.ceil(16 * math.pi * reach), 1 << 16))
    iy, ix = np.divmod(np.arange(width * height, dtype=np.int64), width)
    x0, y0 = ix.astype(np.float64), iy.astype(np.float64)
    centre = np.arctan2(y0 + 0.5 - sy, x0 + 0.5 - sx)
    corners = [(x0 + cx - sx, y0 + cy - sy) for cx in (0, 1) for cy in (0, 1)]
    rel = np.stack([np.arctan2(dy, dx) - centre for dx, dy in corners])
    rel = (rel + math.pi) % (2 * math.pi) - math.pi  # corners' bearings about the centre's: a span under pi
    rel[np.stack([(dx == 0) & (dy == 0) for dx, dy in corners])] = 0.0  # a corner at the sensor has no bearing
    scale = bins / (2 * math.pi)
    lo = np.floor((centre + rel.min(axis=0) + math.pi) * scale).astype(np.int64)
    hi = np.floor((centre + rel.max(axis=0) + math.pi) * scale).astype(np.int64)
    hi, lo = hi - (lo // bins) * bins, lo % bins
    holds_sensor = (x0 <= sx) & (sx < x0 + 1) & (y0 <= sy) & (sy < y0 + 1)  # the half-open cell
    lo[holds_sensor], hi[holds_sensor] = 0, bins - 1
    hi = np.minimum(hi, lo + bins - 1)
    span = hi - lo + 1
    level = np.floor(np.log2(span)).astype(np.int64)
    level[(1 << (level + 1)) <= span] += 1  # float rounding at powers of two
    level[(1 << level) > span] -= 1
    levels = int(level.max()) + 1
    nearest = np.hypot(np.maximum(np.maximum(x0 - sx, sx - x0 - 1), 0.0),
                       np.maximum(np.maximum(y0 - sy, sy - y0 - 1), 0.0)).astype(np.float32)
    nearest[holds_sensor] = -1.0
    row = level * (2 * bins)
    return _BeamCells(bins, levels, (row + lo).astype(np.int32), (row + hi - (1 << level) + 1).astype(np.int32), nearest)


def obstacle_points(xyz: np.ndarray, class_id: np.ndarray, valid: np.ndarray, obstacle: np.ndarray) -> np.ndarray:
    """(K, 3) float32: the valid points whose class is an obstacle class, in the input's order."""
    return np.ascontiguousarray(xyz[valid & obstacle[class_id]], np.float32)


def obstacle_lookup(class_names: list[str], obstacle_classes: list[str]) -> np.ndarray:
    """(256,) bool lookup: which class ids are obstacles. Unknown names in the list raise ConfigError."""
    lookup = np.zeros(256, bool)
    if obstacle_classes:
        index = {name: i for i, name in enumerate(class_names)}
        unknown = [n for n in obstacle_classes if n not in index]
        if unknown:
            raise ConfigError(
                f"parameter 'occupancy.obstacle_classes': unknown class name(s) {unknown}; classes are {class_names}"
            )
        lookup[[index[n] for n in obstacle_classes]] = True
    else:
        for i, name in enumerate(class_names):
            lookup[i] = name.lower() not in GROUND_CLASS_NAMES
    return lookup


# --------------------------------------------------------------------------------------------------
# Selection and encoding
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSelection:
    """Which outputs to compute this frame (the node asks its publishers for subscribers)."""

    segmentation: bool = True
    embeddings: bool = True
    visualization: bool = True
    occupancy: bool = True
    obstacles: bool = True
    novelty: bool = False  # ~/output/novelty has subscribers (published by the node apart from encode_outputs)

    @property
    def any(self) -> bool:
        return (self.segmentation or self.embeddings or self.visualization or self.occupancy or self.obstacles
                or self.novelty)

    @property
    def needs_classes(self) -> bool:
        """Segmentation, its colours, the grid and the obstacles all need the class of every point."""
        return self.segmentation or self.visualization or self.occupancy or self.obstacles


@dataclass
class ComputedFrame:
    """A frame between inference and publishing: the input's header, its results, which outputs
    to encode, the ms spent computing it, whether its stamp is a time (not zero, negative, ...:
    such a frame is kept out of the latency figures) and, with a novelty score, the share of recent
    frames over the novelty threshold (:class:`~ssl3d_ros.perception.health.NoveltyMonitor`)."""

    header: Any
    cloud: CloudResult
    selection: OutputSelection
    compute_ms: float
    stamp_valid: bool = True
    novelty_recent_share: float | None = None


@dataclass(frozen=True)
class NoveltyReading:
    """What ``~/output/novelty`` (geometry_msgs/Vector3Stamped, the input's header) carries: x the
    frame's score, y the share of its voxels over 1.0, z the share of recent frames over the threshold."""

    score: float
    voxel_share: float
    recent_share: float


def novelty_reading(frame: ComputedFrame) -> NoveltyReading | None:
    """The frame's novelty output (None when it has no score: no reference, no valid voxel)."""
    result = frame.cloud.result
    if result.novelty is None:
        return None
    return NoveltyReading(float(result.novelty), float(result.novelty_voxel_share or 0.0),
                          float(frame.novelty_recent_share or 0.0))


@dataclass
class OutputEncoder:
    """The lookups outputs need, built once per node from the model's classes and the parameters."""

    color_table: np.ndarray  # (256, 3) uint8 by class_id
    obstacle: np.ndarray  # (256,) bool by class_id
    occupancy: OccupancyConfig
    embeddings_per_voxel: bool = False
    point_novelty: bool = False  # a `novelty` field in the segmentation cloud (parameter novelty.per_point)

    @classmethod
    def for_classes(cls, class_names: list[str], class_colors: np.ndarray, cfg: NodeConfig) -> "OutputEncoder":
        """Raises ConfigError naming the parameter when the obstacle classes are not the model's."""
        colors = parse_colors(cfg.classes.colors) if cfg.classes.colors else class_colors
        return cls(
            color_table=class_color_table(colors, len(class_names)),
            obstacle=obstacle_lookup(class_names, list(cfg.occupancy.obstacle_classes)),
            occupancy=cfg.occupancy,
            embeddings_per_voxel=cfg.embeddings.per_voxel,
            point_novelty=cfg.novelty.per_point,
        )

    def encode(self, cloud: CloudResult, selection: OutputSelection) -> Iterator[tuple[str, "EncodedCloud | OccupancyGrid", float]]:
        """See :func:`encode_outputs`."""
        return encode_outputs(cloud, selection, self)


def encode_outputs(
    cloud: CloudResult, selection: OutputSelection, encoder: OutputEncoder,
) -> Iterator[tuple[str, "EncodedCloud | OccupancyGrid", float]]:
    """Encode every selected output of a frame, one at a time: ``(name, payload, encode ms)``.

    Per-point clouds keep the input's point order, layout (height kept) and coordinates; the grid and
    the obstacles (x, y, z float32 of the obstacle-class points, unorganized) are in the base frame. A
    generator, so the node publishes each output as soon as it is encoded (segmentation and obstacles
    first: planners wait on them).
    """
    result, xyz = cloud.result, cloud.xyz
    height = cloud.height if len(xyz) else 1  # an empty cloud (even of height 0) encodes as 0 points
    steps: list[tuple[str, Callable[[], Any]]] = []
    if selection.segmentation:
        fields = {"class_id": result.class_id, "probability": result.probability, "entropy": result.entropy}
        if encoder.point_novelty and result.point_novelty is not None:
            fields["novelty"] = result.point_novelty  # after Autoware's 24 bytes: 28-byte points
        steps.append(("segmentation", lambda: encode_cloud(
            xyz, fields, height=height,
            align=True,  # x y z class_id(+3 pad) probability entropy = 24 bytes, Autoware's layout
        )))
    if selection.obstacles:
        steps.append(("obstacles", lambda: encode_cloud(
            obstacle_points(cloud.base_xyz, result.class_id, result.valid, encoder.obstacle))))
    if selection.visualization:
        steps.append(("visualization", lambda: encode_cloud(
            xyz, {"rgb": colorize(result.class_id, encoder.color_table)}, height=height, align=True)))
    if selection.embeddings:
        if encoder.embeddings_per_voxel:
            steps.append(("embeddings", lambda: encode_cloud(
                result.voxel_coord, {"embedding": result.voxel_embedding}, align=True)))
        else:
            steps.append(("embeddings", lambda: encode_cloud(
                xyz, {"embedding": result.embedding}, height=height, align=True)))
    if selection.occupancy:
        steps.append(("occupancy", lambda: occupancy_grid(
            cloud.base_xyz, result.class_id, result.valid, encoder.obstacle, encoder.occupancy,
            result.sensor_origin[:2])))
    for name, build in steps:
        t = time.perf_counter()  # each output's own time: not what the caller did with the previous one
        payload = build()
        yield name, payload, (time.perf_counter() - t) * 1e3


__all__ = [
    "FREE", "OCCUPIED", "UNKNOWN", "OUTPUTS", "BASE_FRAME_OUTPUTS", "GROUND_CLASS_NAMES", "INVALID_COLOR", "parse_colors",
    "class_color_table", "colorize", "OccupancyGrid", "occupancy_grid", "free_along_beams", "obstacle_points",
    "obstacle_lookup", "OutputSelection", "ComputedFrame", "NoveltyReading", "novelty_reading",
    "OutputEncoder", "encode_outputs",
]
