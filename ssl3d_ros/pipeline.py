"""Per-frame inference used by the ROS node, the offline replay and the evaluation: Scan -> per-point outputs.

The node is a thin shell over :class:`PerceptionPipeline`; replay and the tests call the very same
``process`` on the same scan, so "the node's output equals offline inference" is checkable exactly.
No rclpy here. The node's parameters (``config/perception.yaml``) are the :class:`NodeConfig` tree,
loadable without ROS by :func:`load_node_config` so offline tools run with the node's settings.

Outputs keep the input point order: a point dropped by preprocessing (NaN, out of range, cropped)
stays in place with ``valid = False`` and ``class_id = 255``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from .checkpoint import Checkpoint, load_checkpoint
from .codec import CloudFormatError, decode_cloud, scan_from_cloud
from .codec import xyz as cloud_xyz
from .config import ConfigError, from_dict
from .heap import retain_freed_memory
from .models.heads import StreamingKMeans, segment_outputs
from .models.sparse import spconv_available
from .preprocessing import PreprocessConfig, collate, preprocess
from .scan import Scan

INVALID_CLASS = 255  # class_id of points filtered out before inference (kept in place, never removed)
PACKAGED_CHECKPOINT = "default_nano.safetensors"  # in ssl3d_ros/data, see docs for the command that made it
FREE, OCCUPIED, UNKNOWN = 0, 100, -1  # nav_msgs/OccupancyGrid cell values
# Sparse-conv backend on CPU: the pure-torch convs. spconv 2.3.8's multi-threaded CPU forward races
# (outputs change from run to run, traveller59/spconv#679), and the node's output must equal offline
# inference of the same scan.
CPU_BACKEND = "torch"

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
_HEX_COLOR = re.compile(r"^#?[0-9a-fA-F]{6}$")


def _doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field carrying its parameter description (the node declares it with this text)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


# --------------------------------------------------------------------------------------------------
# Parameters (one tree, read from ROS parameters by the node and from YAML by offline tools)
# --------------------------------------------------------------------------------------------------


@dataclass
class QosConfig:
    reliability: Literal["best_effort", "reliable"] = _doc(
        "input subscription reliability; best_effort accepts both best-effort and reliable publishers",
        "best_effort")
    depth: int = _doc("input queue depth (keep-last); the node keeps only the newest scan anyway", 1)


@dataclass
class InputConfig:
    intensity_field: str = _doc("PointCloud2 field used as intensity ('' = none, zeros fed to the model)",
                                "intensity")
    intensity_scale: float = _doc("full-scale value of the intensity field (0 = auto: checkpoint's setting)",
                                  0.0)
    max_points: int = _doc("largest cloud accepted (height*width points); a larger one is rejected before it is "
                           "decoded, so a hostile or misconfigured sender cannot stall the node (0 = no limit)",
                           4_000_000)
    qos: QosConfig = field(default_factory=QosConfig)


@dataclass
class PreprocessingOverrides:
    voxel_size: float = _doc("voxel size in metres (0 = the checkpoint's)", 0.0)
    min_range: float = _doc("drop points closer than this, metres (negative = the checkpoint's)", -1.0)
    max_range: float = _doc("drop points farther than this, metres (0 = the checkpoint's)", 0.0)
    max_points: int = _doc("largest number of points fed to the model per scan (0 = the checkpoint's)", 0)


@dataclass
class ClassesConfig:
    names: list[str] = _doc("class names by class id (empty = the checkpoint's; k-means: segment_<i>)",
                            factory=list)
    colors: list[str] = _doc("'#rrggbb' colour by class id (empty = the checkpoint's or a palette)",
                             factory=list)


@dataclass
class KMeansConfig:
    clusters: int = _doc("number of unsupervised segments when the checkpoint has no segmentation head", 12)


@dataclass
class EmbeddingsConfig:
    dims: int = _doc("embedding channels published (0 = all D of the checkpoint; k > 0 = first k PCA "
                     "components of the checkpoint's PCA basis)", 0)
    per_voxel: bool = _doc("publish one embedding per voxel instead of one per input point", False)


@dataclass
class OccupancyConfig:
    resolution: float = _doc("cell size in metres", 0.5)
    size_x: float = _doc("grid extent along x in metres", 100.0)
    size_y: float = _doc("grid extent along y in metres", 100.0)
    origin_x: float = _doc("x of the grid's lower-left corner in the input frame", -50.0)
    origin_y: float = _doc("y of the grid's lower-left corner in the input frame", -50.0)
    z_min: float = _doc("ignore points below this height (input frame), metres", -3.0)
    z_max: float = _doc("ignore points above this height (input frame), metres", 3.0)
    obstacle_classes: list[str] = _doc(
        "class names marked occupied (empty = every class that is not ground-like)", factory=list)


@dataclass
class DiagnosticsConfig:
    budget_ms: float = _doc("processing time budget per scan; median above it -> WARN", 100.0)
    error_budget_ms: float = _doc("median processing time above this -> ERROR", 250.0)
    period_s: float = _doc("diagnostics publication period", 1.0)
    stale_after_s: float = _doc("no scan for this long -> WARN", 3.0)


@dataclass
class NodeConfig:
    """The perception node's parameters (``config/perception.yaml``), usable offline."""

    checkpoint: str = _doc("checkpoint .safetensors path ('' = the default checkpoint shipped with the package)",
                           "")
    device: Literal["auto", "cuda", "cpu"] = _doc("inference device; auto = CUDA when available", "auto")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = _doc(
        "inference precision; auto = fp16 on CUDA, fp32 on CPU", "auto")
    cpu_threads: int = _doc(
        "torch CPU threads (0 = torch's default, one per core); on a CPU shared with other busy processes "
        "use fewer than the cores: oversubscribed threads ran 10-20x slower on a busy 2-core machine", 0)
    retain_freed_memory: bool = _doc(
        "keep memory freed between frames in the process heap (glibc malloc) instead of returning it to the "
        "OS, so large frames do not page-fault every buffer again; resident memory stays at its high-water mark",
        True)
    input: InputConfig = field(default_factory=InputConfig)
    preprocessing: PreprocessingOverrides = field(default_factory=PreprocessingOverrides)
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


def validate_node_config(cfg: NodeConfig) -> NodeConfig:
    """Range checks beyond types; raises ConfigError naming the parameter."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"parameter '{name}': {what}")

    p, o, d = cfg.preprocessing, cfg.occupancy, cfg.diagnostics
    need(cfg.cpu_threads >= 0, "cpu_threads", f"must be >= 0 (0 = torch's default), got {cfg.cpu_threads}")
    need(cfg.input.qos.depth >= 1, "input.qos.depth", f"must be >= 1, got {cfg.input.qos.depth}")
    need(cfg.input.intensity_scale >= 0, "input.intensity_scale", "must be >= 0 (0 = auto)")
    need(cfg.input.max_points >= 0, "input.max_points", f"must be >= 0 (0 = no limit), got {cfg.input.max_points}")
    need(p.voxel_size >= 0, "preprocessing.voxel_size", f"must be >= 0 (0 = checkpoint's), got {p.voxel_size}")
    need(p.max_range >= 0, "preprocessing.max_range", f"must be >= 0 (0 = checkpoint's), got {p.max_range}")
    need(p.max_range == 0 or p.min_range < p.max_range, "preprocessing.min_range",
         f"{p.min_range} is not below max_range {p.max_range}")
    need(p.max_points >= 0, "preprocessing.max_points", f"must be >= 0 (0 = checkpoint's), got {p.max_points}")
    need(cfg.kmeans.clusters >= 2, "kmeans.clusters", f"must be >= 2, got {cfg.kmeans.clusters}")
    need(cfg.kmeans.clusters <= 254, "kmeans.clusters", "must be <= 254 (class_id 255 marks invalid points)")
    need(cfg.embeddings.dims >= 0, "embeddings.dims", f"must be >= 0 (0 = all), got {cfg.embeddings.dims}")
    for i, c in enumerate(cfg.classes.colors):
        need(bool(_HEX_COLOR.match(c)), f"classes.colors[{i}]", f"{c!r} is not '#rrggbb'")
    need(o.resolution > 0, "occupancy.resolution", f"must be > 0, got {o.resolution}")
    need(o.size_x > 0 and o.size_y > 0, "occupancy.size_x/size_y", "must be > 0")
    cells = math.ceil(o.size_x / o.resolution) * math.ceil(o.size_y / o.resolution) if o.resolution > 0 else 0
    need(cells <= 16_000_000, "occupancy.resolution", f"grid of {cells} cells is too large (max 16M)")
    need(o.z_min < o.z_max, "occupancy.z_min", f"{o.z_min} is not below z_max {o.z_max}")
    need(d.budget_ms > 0, "diagnostics.budget_ms", "must be > 0")
    need(d.error_budget_ms >= d.budget_ms, "diagnostics.error_budget_ms", "must be >= budget_ms")
    need(d.period_s > 0, "diagnostics.period_s", "must be > 0")
    need(d.stale_after_s > 0, "diagnostics.stale_after_s", "must be > 0")
    return cfg


def node_config_from_params(params: dict[str, Any]) -> NodeConfig:
    """NodeConfig from ROS-style parameters: nested mappings and/or dotted keys (``input.qos.depth``)."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"parameter '{key}': '{part}' is both a value and a group")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return validate_node_config(from_dict(NodeConfig, nested))


def load_node_config(path: str | Path, node_name: str = "ssl3d_perception") -> NodeConfig:
    """NodeConfig from a ROS 2 parameter file (``/**:`` or ``<node_name>:`` with ``ros__parameters``)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"parameter file not found: {path}") from None
    params: dict[str, Any] = {}
    for key in ("/**", node_name, f"/{node_name}"):
        section = doc.get(key)
        if isinstance(section, dict):
            params.update(section.get("ros__parameters") or {})
    params.pop("use_sim_time", None)
    try:
        return node_config_from_params(params)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------------------


def resolve_device(requested: str) -> tuple[torch.device, list[str]]:
    """The device to run on and the warnings to log (CPU fallback when CUDA is missing)."""
    warnings: list[str] = []
    if requested == "cpu":
        return torch.device("cpu"), warnings
    if requested not in ("auto", "cuda"):
        raise ConfigError(f"parameter 'device': {requested!r} is not one of auto, cuda, cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device()), warnings
    why = ("this torch build has no CUDA (install the CUDA wheel of torch)" if torch.version.cuda is None
           else "no CUDA device is visible")
    warnings.append(f"device '{requested}': {why}; falling back to CPU inference")
    return torch.device("cpu"), warnings


def resolve_precision(requested: str, device: torch.device) -> tuple[torch.dtype, list[str]]:
    """Model dtype: half on CUDA by default; CPU always runs float32 (its half kernels are slow or missing)."""
    if device.type == "cuda":
        if requested in ("auto", "fp16"):
            return torch.float16, []
        if requested == "bf16":
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16, []
            return torch.float16, ["precision 'bf16' is not supported by this GPU; using fp16"]
        return torch.float32, []
    if requested in ("fp16", "bf16"):
        return torch.float32, [f"precision '{requested}' is not used on CPU; running fp32"]
    return torch.float32, []


def packaged_checkpoint() -> Path:
    """The default checkpoint shipped with the package (package data, also found in the ament share dir)."""
    try:
        candidate = Path(str(resources.files("ssl3d_ros") / "data" / PACKAGED_CHECKPOINT))
        if candidate.is_file():
            return candidate
    except (ModuleNotFoundError, TypeError):
        pass
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("ssl3d_ros")) / "data" / PACKAGED_CHECKPOINT
        if candidate.is_file():
            return candidate
    except Exception:  # no ament index: plain pip install
        pass
    raise ConfigError(
        f"parameter 'checkpoint' is empty and the packaged default checkpoint ssl3d_ros/data/{PACKAGED_CHECKPOINT} "
        "is missing; pass checkpoint:=/path/to/model.safetensors"
    )


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class FrameResult:
    """Per-point outputs of one scan, in the scan's point order (N points), plus per-voxel embeddings.

    ``class_id`` is 255 where ``valid`` is False; ``probability`` is 0 and ``entropy`` 1 (maximal
    uncertainty, as :func:`segment_outputs`) there, and the embedding rows are zeros. ``entropy`` is
    normalised by ln(K), so it lies in 0..1. Arrays are None for outputs that were not requested.
    """

    valid: np.ndarray  # (N,) bool
    point_voxel: np.ndarray  # (N,) int64, -1 for dropped points
    class_id: np.ndarray | None = None  # (N,) uint8
    probability: np.ndarray | None = None  # (N,) float32, softmax probability of class_id
    entropy: np.ndarray | None = None  # (N,) float32, softmax entropy / ln(K)
    embedding: np.ndarray | None = None  # (N, D) float32
    voxel_coord: np.ndarray | None = None  # (M, 3) float32, one kept point per voxel (metres)
    voxel_embedding: np.ndarray | None = None  # (M, D) float32
    timings_ms: dict[str, float] = field(default_factory=dict)  # preprocess, inference, postprocess

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    def scatter(self, index: np.ndarray, total: int) -> "FrameResult":
        """The same result over ``total`` points, the result's rows placed at ``index`` (the decoder's
        row-major positions) and every other point invalid: back to the full message order."""
        if len(index) == total:  # the decoder's index is ascending, so this is arange(total)
            return self

        def put(values: np.ndarray | None, fill: Any) -> np.ndarray | None:
            if values is None:
                return None
            out = np.full((total,) + values.shape[1:], fill, values.dtype)
            out[index] = values
            return out

        return dataclasses.replace(
            self,
            valid=put(self.valid, False),
            point_voxel=put(self.point_voxel, -1),
            class_id=put(self.class_id, INVALID_CLASS),
            probability=put(self.probability, 0.0),
            entropy=put(self.entropy, 1.0),
            embedding=put(self.embedding, 0.0),
        )


@dataclass
class CloudResult:
    """A FrameResult in the order of a PointCloud2's ``height*width`` points, with their coordinates."""

    result: FrameResult
    xyz: np.ndarray  # (height*width, 3) float32, as in the message (non-finite points included)
    height: int
    width: int
    decode_ms: float


def parse_colors(hex_colors: list[str]) -> np.ndarray:
    out = np.zeros((len(hex_colors), 3), np.uint8)
    for i, c in enumerate(hex_colors):
        c = c.lstrip("#")
        out[i] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
    return out


def class_color_table(colors: np.ndarray, num_classes: int) -> np.ndarray:
    """(256, 3) uint8 lookup by class_id: given colours, palette for the rest, black for 255 (invalid)."""
    table = np.zeros((256, 3), np.uint8)
    table[:num_classes] = _PALETTE[np.arange(num_classes) % len(_PALETTE)]
    n = min(len(colors), num_classes)
    table[:n] = colors[:n]
    table[INVALID_CLASS] = INVALID_COLOR
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
    ix = np.floor((xyz[:, 0] - cfg.origin_x) / cfg.resolution)
    iy = np.floor((xyz[:, 1] - cfg.origin_y) / cfg.resolution)
    with np.errstate(invalid="ignore"):  # NaN points are already invalid
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
# The pipeline
# --------------------------------------------------------------------------------------------------


class _DeviceStaging:
    """Pinned host and device buffers for the model input, grown geometrically, reused every frame.

    On CUDA the per-frame host->device copy goes through these instead of fresh allocations, and the
    copy is asynchronous from pinned memory.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, channels: int, capacity: int) -> None:
        self.device, self.dtype, self.channels = device, dtype, channels
        self.capacity = 0
        self._reserve(max(capacity, 1))

    def _reserve(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        rows = max(rows, int(self.capacity * 1.5))
        pin = self.device.type == "cuda"
        self.host_feat = torch.empty((rows, self.channels), dtype=torch.float32, pin_memory=pin)
        self.host_coords = torch.empty((rows, 4), dtype=torch.int32, pin_memory=pin)
        self.dev_feat = torch.empty((rows, self.channels), dtype=self.dtype, device=self.device)
        self.dev_coords = torch.empty((rows, 4), dtype=torch.int32, device=self.device)
        self.capacity = rows

    def upload(self, feats: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = feats.shape[0]
        self._reserve(m)
        self.host_feat[:m].copy_(feats)
        self.host_coords[:m].copy_(coords)
        dev_feat, dev_coords = self.dev_feat[:m], self.dev_coords[:m]
        dev_feat.copy_(self.host_feat[:m], non_blocking=True)  # casts to the model dtype on the device
        dev_coords.copy_(self.host_coords[:m], non_blocking=True)
        return dev_feat, dev_coords


class PerceptionPipeline:
    """Checkpoint + preprocessing + heads, loaded once and warmed up; ``process(scan)`` per frame."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        device: torch.device,
        dtype: torch.dtype,
        preprocess_cfg: PreprocessConfig,
        class_names: list[str],
        class_colors: np.ndarray,
        obstacle: np.ndarray,
        embedding_dims: int = 0,
        kmeans_clusters: int = 12,
        kmeans_input: str = "hypercolumn",
        intensity_field: str = "intensity",
        source: str = "",
        warnings: list[str] | None = None,
        max_input_points: int = 0,
    ) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.preprocess_cfg = preprocess_cfg
        self.source = source
        self.warnings = list(warnings or [])
        self.encoder = checkpoint.encoder.to(device=device, dtype=dtype).eval()
        self.seg_head = None
        self.kmeans = None
        self.intensity_field = intensity_field
        self.max_input_points = int(max_input_points)  # 0 = no limit
        self.kmeans_input = kmeans_input
        if checkpoint.seg_head is not None:
            self.seg_head = checkpoint.seg_head.to(device=device, dtype=torch.float32).eval()
        elif checkpoint.kmeans_centroids is not None:
            self.kmeans = checkpoint.kmeans(seed=0)
        else:
            self.kmeans = StreamingKMeans(kmeans_clusters, self._full_dims, seed=0)
        self._initial_centroids = None if self.kmeans is None else self.kmeans.centroids
        self.class_names = list(class_names)
        self.color_table = class_color_table(class_colors, len(self.class_names))
        self.obstacle = obstacle
        self.pca = checkpoint.pca.to(device).eval() if embedding_dims > 0 else None
        self.embedding_dims = embedding_dims
        in_channels = int(checkpoint.encoder_config.in_channels)
        capacity = int(getattr(preprocess_cfg, "max_points", 0) or 0) or 150_000
        self._staging = _DeviceStaging(device, dtype, in_channels, capacity) if device.type == "cuda" else None
        self.frames = 0

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        overrides: NodeConfig | None = None,
    ) -> "PerceptionPipeline":
        """Load a checkpoint for inference; ``overrides`` are the node's parameters (NodeConfig).

        ``path`` None or '' means the packaged default checkpoint. Raises ConfigError for parameters
        that do not fit the checkpoint and CheckpointError for unreadable checkpoints.
        """
        cfg = overrides if overrides is not None else NodeConfig()
        path = Path(path) if path else (Path(cfg.checkpoint) if cfg.checkpoint else packaged_checkpoint())
        torch_device, warnings = resolve_device(device)
        dtype, more = resolve_precision(precision, torch_device)
        warnings += more
        backend = "auto" if torch_device.type == "cuda" else CPU_BACKEND
        if torch_device.type == "cuda" and not spconv_available(torch_device):
            warnings.append("the spconv CUDA wheel is missing; using the pure-torch sparse convolutions on CUDA")
            backend = "torch"
        ckpt = load_checkpoint(path, device=torch_device, backend=backend)
        pre = _apply_preprocessing_overrides(ckpt.preprocessing, cfg)

        kmeans_input = "hypercolumn"
        if ckpt.seg_head is not None:
            num_classes = int(ckpt.seg_head.num_classes)
            ckpt_names = ckpt.class_names or [f"class_{i}" for i in range(num_classes)]
        elif ckpt.kmeans_centroids is not None:  # stored segments: ids match the checkpoint's
            num_classes = int(ckpt.kmeans_centroids.shape[0])
            ckpt_names = [f"segment_{i}" for i in range(num_classes)]
            kmeans_input = ckpt.kmeans_input
        else:
            num_classes = cfg.kmeans.clusters
            ckpt_names = [f"segment_{i}" for i in range(num_classes)]
        if num_classes > 254:
            raise ConfigError(f"{path}: {num_classes} classes do not fit class_id uint8 (255 marks invalid points)")
        names = list(cfg.classes.names) or ckpt_names
        if len(names) != num_classes:
            raise ConfigError(
                f"parameter 'classes.names': {len(names)} names for the {num_classes} classes of {path}"
            )
        colors = parse_colors(cfg.classes.colors) if cfg.classes.colors else _checkpoint_colors(ckpt)
        obstacle = obstacle_lookup(names, list(cfg.occupancy.obstacle_classes))

        dims = cfg.embeddings.dims
        if dims > 0:
            if ckpt.pca is None:
                raise ConfigError(
                    f"parameter 'embeddings.dims' = {dims} needs a PCA basis, and {path} has none "
                    "(set embeddings.dims: 0 for the full embedding)"
                )
            available = _pca_components(ckpt.pca)
            if dims > available:
                raise ConfigError(
                    f"parameter 'embeddings.dims' = {dims} exceeds the {available} PCA components of {path}"
                )
        return cls(
            ckpt,
            device=torch_device,
            dtype=dtype,
            preprocess_cfg=pre,
            class_names=names,
            class_colors=colors,
            obstacle=obstacle,
            embedding_dims=dims,
            kmeans_clusters=num_classes,
            kmeans_input=kmeans_input,
            intensity_field=cfg.input.intensity_field,
            source=str(path),
            warnings=warnings,
            max_input_points=cfg.input.max_points,
        )

    @classmethod
    def from_config(cls, cfg: NodeConfig) -> "PerceptionPipeline":
        if cfg.cpu_threads > 0:
            torch.set_num_threads(cfg.cpu_threads)
        if cfg.retain_freed_memory:
            retain_freed_memory()
        return cls.from_checkpoint(cfg.checkpoint or None, cfg.device, cfg.precision, cfg)

    # -- per frame ------------------------------------------------------------------------------

    @property
    def embedding_channels(self) -> int:
        """D of the published embedding."""
        if self.embedding_dims > 0:
            return self.embedding_dims
        return int(self._full_dims)

    @property
    def _full_dims(self) -> int:
        """Channels of the hypercolumn (every level at level-0 resolution), the full embedding."""
        return int(self.encoder.hypercolumn_channels)

    def warm_up(self, points: int | None = None, iterations: int | None = None, seed: int = 0) -> float:
        """Run the model on a synthetic scan so kernels, caches and buffers exist before the first scan.

        Defaults: on CUDA two passes over 100k points (kernel selection, allocator pools and the pinned
        staging buffers sized for a full scan); on CPU one pass over 5k points (only lazy
        initialisation to trigger). Returns the last pass's time in ms. k-means state is restored
        afterwards so the warm-up does not shape the unsupervised segments.
        """
        cuda = self.device.type == "cuda"
        points = points or (100_000 if cuda else 5_000)
        iterations = iterations or (2 if cuda else 1)
        rng = np.random.default_rng(seed)
        max_range = float(getattr(self.preprocess_cfg, "max_range", 0) or 0) or 50.0
        radius = rng.uniform(3.0, max(4.0, min(max_range, 50.0) * 0.9), points)
        angle = rng.uniform(0, 2 * np.pi, points)
        xyz = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-1.5, 1.5, points)], 1)
        normal = np.zeros((points, 3), np.float32)
        normal[:, 2] = 1.0
        scan = Scan(  # every field a feature may read, so any checkpoint's preprocessing accepts it
            points=xyz.astype(np.float32),
            fields={
                "intensity": rng.uniform(0, 1, points).astype(np.float32),
                "rgb": rng.integers(0, 256, (points, 3), dtype=np.uint8),
                "normal": normal,
            },
            intensity_scale=1.0,
            source="warm-up",
        )
        elapsed = 0.0
        for _ in range(iterations):
            t0 = time.perf_counter()
            self.process(scan, segmentation=True, embeddings=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = (time.perf_counter() - t0) * 1e3
        if self.kmeans is not None:  # the synthetic scan must not shape the segments of the real scene
            self.kmeans.reset()
            if self._initial_centroids is not None:
                self.kmeans.centroids = self._initial_centroids.clone()
        self.frames = 0
        return elapsed

    @torch.inference_mode()
    def process(
        self,
        scan: Scan,
        *,
        segmentation: bool = True,
        embeddings: bool = True,
        update_clusters: bool = True,
    ) -> FrameResult:
        """Segmentation and/or embeddings of every point of ``scan``, in its order.

        ``update_clusters`` (k-means segmentation only) lets this frame nudge the cluster centres;
        ids stay stable across frames because the centres are carried over, never re-initialised.
        """
        t0 = time.perf_counter()
        n = len(scan)
        vox = preprocess(scan, self.preprocess_cfg)  # an empty cloud gives zero voxels, handled below
        result = FrameResult(
            valid=vox.point_valid.numpy(),
            point_voxel=vox.point_voxel.numpy(),
            voxel_coord=vox.coord.numpy(),
        )
        m = len(vox.grid_coord)
        point_voxel, valid = result.point_voxel, result.valid
        t1 = time.perf_counter()
        if m == 0:  # nothing survived preprocessing: every point invalid
            if segmentation:
                result.class_id = np.full(n, INVALID_CLASS, np.uint8)
                result.probability = np.zeros(n, np.float32)
                result.entropy = np.ones(n, np.float32)
            if embeddings:
                d = self.embedding_channels
                result.embedding = np.zeros((n, d), np.float32)
                result.voxel_embedding = np.zeros((0, d), np.float32)
            result.timings_ms = {"preprocess": (t1 - t0) * 1e3, "inference": 0.0, "postprocess": 0.0}
            return result

        sparse = collate([vox])
        if self._staging is not None:
            feats, coords = self._staging.upload(sparse.feats, sparse.coords)
            sparse = dataclasses.replace(sparse, feats=feats, coords=coords, cache={})
        elif sparse.feats.dtype != self.dtype or sparse.feats.device != self.device:
            sparse = dataclasses.replace(
                sparse, feats=sparse.feats.to(self.device, self.dtype), coords=sparse.coords.to(self.device)
            )
        output = self.encoder(sparse)
        # The (M, C_total) hypercolumn is the largest tensor of a frame: build it only for embeddings
        # or k-means; a linear head is applied level by level instead. Heads run in fp32.
        needs_hypercolumn = embeddings or (segmentation and self.seg_head is None)
        hyper = self.encoder.hypercolumn(output).float() if needs_hypercolumn else None
        voxel_class = voxel_prob = voxel_entropy = None
        if segmentation and self.seg_head is not None:
            seg = segment_outputs(self.encoder.linear_over_levels(output, self.seg_head.weight, self.seg_head.bias))
            voxel_class, voxel_prob, voxel_entropy = seg.class_id, seg.probability, seg.entropy
        elif segmentation:
            voxel_class, voxel_prob, voxel_entropy = self._cluster(hyper, update_clusters)
        voxel_embedding = self._embed(hyper) if embeddings else None
        # One device->host transfer per output, after the whole graph is queued.
        if voxel_class is not None:
            voxel_class = voxel_class.to(torch.uint8).cpu().numpy()
            voxel_prob = voxel_prob.cpu().numpy().astype(np.float32, copy=False)
            voxel_entropy = voxel_entropy.cpu().numpy().astype(np.float32, copy=False)
        if voxel_embedding is not None:
            voxel_embedding = voxel_embedding.cpu().numpy().astype(np.float32, copy=False)
        t2 = time.perf_counter()

        # Un-pool to the input points: every point takes its voxel's output; dropped points stay invalid.
        idx = point_voxel[valid]
        if voxel_class is not None:
            result.class_id = np.full(n, INVALID_CLASS, np.uint8)
            result.class_id[valid] = voxel_class[idx]
            result.probability = np.zeros(n, np.float32)
            result.probability[valid] = voxel_prob[idx]
            result.entropy = np.ones(n, np.float32)
            result.entropy[valid] = voxel_entropy[idx]
        if voxel_embedding is not None:
            result.voxel_embedding = voxel_embedding
            result.embedding = np.zeros((n, voxel_embedding.shape[1]), np.float32)
            result.embedding[valid] = voxel_embedding[idx]
        t3 = time.perf_counter()
        self.frames += 1
        result.timings_ms = {
            "preprocess": (t1 - t0) * 1e3,
            "inference": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
        }
        return result

    def scan_from_message(self, msg: Any) -> tuple[Scan, np.ndarray]:
        """Decode a PointCloud2 (rclpy or rosbags) into the Scan the model reads, and each point's
        row-major index in the message (non-finite points are left out).

        The configured intensity field becomes ``fields['intensity']``. Raises CloudFormatError for
        malformed clouds, including one that lacks the intensity field the model needs.
        """
        scan, index = scan_from_cloud(msg)
        name = self.intensity_field
        fields = dict(scan.fields)
        if name:
            if name in fields:
                fields["intensity"] = fields.pop(name)
            elif self.uses_intensity:
                raise CloudFormatError(
                    f"no field {name!r} (parameter input.intensity_field) in the cloud; "
                    f"its fields are {[f.name for f in msg.fields]}"
                )
        else:
            fields.pop("intensity", None)
        return dataclasses.replace(scan, fields=fields), index

    @property
    def uses_intensity(self) -> bool:
        return "intensity" in tuple(self.preprocess_cfg.features)

    def process_cloud(self, msg: Any, *, segmentation: bool = True, embeddings: bool = True) -> CloudResult:
        """``process`` on a PointCloud2, results in the message's point order (all height*width points)."""
        t0 = time.perf_counter()
        total = int(getattr(msg, "height", 0)) * int(getattr(msg, "width", 0))
        if 0 < self.max_input_points < total <= 0xFFFFFFFF:  # larger totals: the decoder names the overflow
            raise CloudFormatError(
                f"cloud of {total} points ({msg.height} x {msg.width}) exceeds parameter input.max_points = "
                f"{self.max_input_points}"
            )
        scan, index = self.scan_from_message(msg)
        height, width = int(msg.height), int(msg.width)
        total = height * width
        points = scan.points if len(index) == total else cloud_xyz(decode_cloud(msg))
        decode_ms = (time.perf_counter() - t0) * 1e3
        result = self.process(scan, segmentation=segmentation, embeddings=embeddings).scatter(index, total)
        return CloudResult(result=result, xyz=points, height=height, width=width, decode_ms=decode_ms)

    def _cluster(self, hyper: torch.Tensor, update_clusters: bool):
        """Unsupervised segments: k-means on the embeddings with ids carried across frames."""
        x = self.checkpoint.pca(hyper) if self.kmeans_input == "pca" else hyper
        labels = self.kmeans.step(x) if update_clusters or not self.kmeans.initialised else self.kmeans.assign(x)
        # Soft assignment for probability/entropy: softmax of negative squared distances in units of
        # the frame's mean nearest distance, so the sharpness does not depend on the embedding scale.
        centroids = self.kmeans.centroids.to(x.device)
        sq_dist = torch.cdist(x, centroids).square()
        nearest = sq_dist.gather(1, labels.unsqueeze(1))
        scale = nearest.mean().clamp_min(1e-12)
        seg = segment_outputs(-sq_dist / scale)
        return labels.to(torch.uint8), seg.probability, seg.entropy

    def _embed(self, hyper: torch.Tensor) -> torch.Tensor:
        if self.pca is not None:
            return self.pca(hyper)[:, : self.embedding_dims]
        return hyper

    def memory_bytes(self) -> dict[str, int]:
        """Device memory in use (CUDA allocator) for diagnostics; empty on CPU."""
        if self.device.type == "cuda":
            return {
                "cuda_allocated": int(torch.cuda.memory_allocated(self.device)),
                "cuda_reserved": int(torch.cuda.memory_reserved(self.device)),
            }
        return {}


def _apply_preprocessing_overrides(pre: PreprocessConfig, cfg: NodeConfig) -> PreprocessConfig:
    o = cfg.preprocessing
    changes: dict[str, Any] = {}
    if o.voxel_size > 0:
        changes["voxel_size"] = float(o.voxel_size)
    if o.min_range >= 0:
        changes["min_range"] = float(o.min_range)
    if o.max_range > 0:
        changes["max_range"] = float(o.max_range)
    if o.max_points > 0:
        changes["max_points"] = int(o.max_points)
    if cfg.input.intensity_scale > 0:
        changes["intensity_scale"] = float(cfg.input.intensity_scale)
    return dataclasses.replace(pre, **changes) if changes else pre


def _pca_components(pca: Any) -> int:
    return int(pca.out_channels)


def _checkpoint_colors(ckpt: Checkpoint) -> np.ndarray:
    """(K, 3) uint8 class colours stored in the checkpoint (empty when it has none)."""
    colors = ckpt.classes.colors if ckpt.classes is not None and ckpt.seg_head is not None else None
    if not colors:
        return np.zeros((0, 3), np.uint8)
    return np.asarray(colors, dtype=np.uint8).reshape(-1, 3)


__all__ = [
    "INVALID_CLASS",
    "NodeConfig",
    "InputConfig",
    "QosConfig",
    "PreprocessingOverrides",
    "ClassesConfig",
    "KMeansConfig",
    "EmbeddingsConfig",
    "OccupancyConfig",
    "DiagnosticsConfig",
    "validate_node_config",
    "node_config_from_params",
    "load_node_config",
    "resolve_device",
    "resolve_precision",
    "packaged_checkpoint",
    "FrameResult",
    "CloudResult",
    "OccupancyGrid",
    "occupancy_grid",
    "obstacle_lookup",
    "class_color_table",
    "colorize",
    "PerceptionPipeline",
]
