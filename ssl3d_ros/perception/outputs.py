"""What the node publishes, as pure functions of one frame's result (no rclpy, no torch).

Output selection (:class:`OutputSelection`: which outputs have subscribers), encoding of the
per-point clouds (:func:`encode_outputs`, layouts in the README's topic table), class colours and
the occupancy grid. The node turns the encoded clouds into messages and publishes them; the replay
and the tests call the same functions, so what is published is checkable without DDS. Whether a
message fits the transport is :mod:`.transport`.
"""
from __future__ import annotations

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
OUTPUTS = ("segmentation", "embeddings", "visualization", "occupancy")

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
    """A 2-D grid in the input frame, nav_msgs/OccupancyGrid conventions: row-major, row = y index."""

    data: np.ndarray  # (height, width) int8: 100 occupied, 0 free (seen, not obstacle), -1 unknown
    resolution: float
    origin_x: float
    origin_y: float

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0])


def occupancy_grid(
    xyz: np.ndarray,
    class_id: np.ndarray,
    valid: np.ndarray,
    obstacle: np.ndarray,
    cfg: OccupancyConfig,
) -> OccupancyGrid:
    """Mark cells holding obstacle-class points occupied, cells seen with only other classes free.

    ``obstacle`` is a (256,) bool lookup by class id. Points outside the grid or the z band, and
    invalid points, are ignored.
    """
    width = int(math.ceil(cfg.size_x / cfg.resolution))
    height = int(math.ceil(cfg.size_y / cfg.resolution))
    grid = np.full(height * width, UNKNOWN, np.int8)
    # Invalid points (NaN, Inf, 1e38 m) overflow or compare as NaN here: quietly, since `valid` drops them.
    with np.errstate(over="ignore", invalid="ignore"):
        ix = np.floor((xyz[:, 0] - cfg.origin_x) / cfg.resolution)
        iy = np.floor((xyz[:, 1] - cfg.origin_y) / cfg.resolution)
        keep = (
            valid
            & (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
            & (xyz[:, 2] >= cfg.z_min) & (xyz[:, 2] <= cfg.z_max)
        )
    cell = iy[keep].astype(np.int64) * width + ix[keep].astype(np.int64)
    is_obstacle = obstacle[class_id[keep]]
    grid[cell] = FREE
    grid[cell[is_obstacle]] = OCCUPIED  # after FREE: one obstacle point makes the cell occupied
    return OccupancyGrid(grid.reshape(height, width), cfg.resolution, cfg.origin_x, cfg.origin_y)


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

    @property
    def any(self) -> bool:
        return self.segmentation or self.embeddings or self.visualization or self.occupancy

    @property
    def needs_classes(self) -> bool:
        """Segmentation, its colours and the grid all need the class of every point."""
        return self.segmentation or self.visualization or self.occupancy


@dataclass
class ComputedFrame:
    """A frame between inference and publishing: the input's header, its results, which outputs
    to encode, the ms spent computing it, and whether its stamp is a time (not zero, negative, ...:
    such a frame is kept out of the latency figures)."""

    header: Any
    cloud: CloudResult
    selection: OutputSelection
    compute_ms: float
    stamp_valid: bool = True


@dataclass
class OutputEncoder:
    """The lookups outputs need, built once per node from the model's classes and the parameters."""

    color_table: np.ndarray  # (256, 3) uint8 by class_id
    obstacle: np.ndarray  # (256,) bool by class_id
    occupancy: OccupancyConfig
    embeddings_per_voxel: bool = False

    @classmethod
    def for_classes(cls, class_names: list[str], class_colors: np.ndarray, cfg: NodeConfig) -> "OutputEncoder":
        """Raises ConfigError naming the parameter when the obstacle classes are not the model's."""
        colors = parse_colors(cfg.classes.colors) if cfg.classes.colors else class_colors
        return cls(
            color_table=class_color_table(colors, len(class_names)),
            obstacle=obstacle_lookup(class_names, list(cfg.occupancy.obstacle_classes)),
            occupancy=cfg.occupancy,
            embeddings_per_voxel=cfg.embeddings.per_voxel,
        )

    def encode(self, cloud: CloudResult, selection: OutputSelection) -> Iterator[tuple[str, "EncodedCloud | OccupancyGrid", float]]:
        """See :func:`encode_outputs`."""
        return encode_outputs(cloud, selection, self)


def encode_outputs(
    cloud: CloudResult, selection: OutputSelection, encoder: OutputEncoder,
) -> Iterator[tuple[str, "EncodedCloud | OccupancyGrid", float]]:
    """Encode every selected output of a frame, one at a time: ``(name, payload, encode ms)``.

    Per-point clouds keep the input's point order and layout (height kept). A generator, so the
    node publishes each output as soon as it is encoded (segmentation first: planners wait on it).
    """
    result, xyz = cloud.result, cloud.xyz
    height = cloud.height if len(xyz) else 1  # an empty cloud (even of height 0) encodes as 0 points
    steps: list[tuple[str, Callable[[], Any]]] = []
    if selection.segmentation:
        steps.append(("segmentation", lambda: encode_cloud(
            xyz,
            {"class_id": result.class_id, "probability": result.probability, "entropy": result.entropy},
            height=height,
            align=True,  # x y z class_id(+3 pad) probability entropy = 24 bytes, Autoware's layout
        )))
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
            xyz, result.class_id, result.valid, encoder.obstacle, encoder.occupancy)))
    for name, build in steps:
        t = time.perf_counter()  # each output's own time: not what the caller did with the previous one
        payload = build()
        yield name, payload, (time.perf_counter() - t) * 1e3


__all__ = [
    "FREE", "OCCUPIED", "UNKNOWN", "OUTPUTS", "GROUND_CLASS_NAMES", "INVALID_COLOR", "parse_colors", "class_color_table",
    "colorize", "OccupancyGrid", "occupancy_grid", "obstacle_lookup", "OutputSelection", "ComputedFrame",
    "OutputEncoder", "encode_outputs",
]
