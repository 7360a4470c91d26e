"""The perception node's parameter tree (``config/perception.yaml``), usable without ROS.

:class:`NodeConfig` is the one schema: the node declares a ROS parameter for every leaf (with the
field's description, see :func:`leaf_parameters`), offline tools read the same YAML file with
:func:`load_node_config`, so replay and evaluation run with the node's settings. Range checks live
in :func:`validate_node_config`; every error names the parameter.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ConfigError, from_dict
from ..labels import NO_CLASS

_HEX_COLOR = re.compile(r"^#?[0-9a-fA-F]{6}$")
AUTO_EMBEDDING_DIMS = 32  # embeddings.dims -1: PCA components published when the checkpoint has a basis
# input.max_points -1 (auto) without a transport that bounds it (offline, other middleware, no Fast DDS
# profile): about 1 s of work on 2 CPU cores with the default voxel budget (README, "Bounded frames").
DEFAULT_MAX_INPUT_POINTS = 4_000_000
#: Parameters rclpy itself declares or reads; not the node's to reject.
FOREIGN_PARAMETERS = ("use_sim_time", "start_type_description_service")


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
    intensity_field: str = _doc("PointCloud2 field used as intensity ('' = none: zeros fed to a model that "
                                "reads intensity)", "intensity")
    missing_intensity: Literal["zero", "reject"] = _doc(
        "a cloud without the intensity field (xyz-only drivers, depth cameras, meshes): 'zero' feeds zeros "
        "(the packaged model is trained with intensity dropped from some scans, so this is in its distribution; "
        "counted in /diagnostics), 'reject' rejects the frame", "zero")
    intensity_scale: float = _doc("full-scale value of the intensity field (0 = auto: checkpoint's setting)",
                                  0.0)
    max_points: int = _doc("largest cloud accepted (height*width points); a larger one is rejected before it is "
                           "decoded, so a hostile or misconfigured sender cannot stall the node (0 = no limit; "
                           "-1 = auto: 4,000,000, or fewer when the Fast DDS profile's shared-memory segment "
                           "carries fewer 16-byte points, so that no accepted size vanishes in transport)", -1)
    qos: QosConfig = field(default_factory=QosConfig)


@dataclass
class PreprocessingOverrides:
    voxel_size: float = _doc("voxel size in metres (0 = the checkpoint's)", 0.0)
    min_range: float = _doc("drop points closer than this, metres (negative = the checkpoint's)", -1.0)
    max_range: float = _doc("drop points farther than this, metres (0 = the checkpoint's)", 0.0)
    max_points: int = _doc(
        "voxel budget: largest number of voxels fed to the model per scan; a larger scan keeps a fixed-seed "
        "subset of its voxels, the points of the others are marked invalid and counted (diagnostics "
        "points_subsampled_total). Bounds one frame's work and memory: a normal HDL-64 scan has ~50k voxels "
        "at 0.15 m (0 = the checkpoint's, usually none)", 150_000)


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
    dims: int = _doc("embedding channels published: -1 = auto (the first 32 components of the checkpoint's PCA "
                     "basis when it has one, else all D); 0 = all D; k > 0 = the first k PCA components. Full "
                     "embeddings of a 120k-point scan are ~120 MB at D = 256, too large for the sensor rate", -1)
    per_voxel: bool = _doc("publish one embedding per voxel (at its kept point) instead of one per input point: "
                           "bounded by the voxel budget, a few MB a frame instead of tens to thousands", True)


@dataclass
class FrameConfig:
    base_frame: str = _doc(
        "gravity-aligned frame (z up) the points are moved into before preprocessing; the model, the occupancy "
        "grid and the obstacles cloud work in it, per-point outputs keep the input's frame ('' = the input's "
        "frame, nothing moved: for z-up sensors such as a level LiDAR)", "")
    sensor_xyz: list[float] = _doc(
        "[x, y, z] of the sensor frame's origin in base_frame, metres (the input's frame_id is the sensor frame)",
        factory=lambda: [0.0, 0.0, 0.0])
    sensor_rpy: list[float] = _doc(
        "[roll, pitch, yaw] of the sensor frame in base_frame, radians, fixed axes x-y-z as tf2 and "
        "static_transform_publisher (a depth camera's optical frame looking along base x: [-1.5708, 0.0, -1.5708]); "
        "give this or sensor_quaternion", factory=list)
    sensor_quaternion: list[float] = _doc(
        "[x, y, z, w] orientation of the sensor frame in base_frame (normalised on reading); give this or sensor_rpy",
        factory=list)
    tf_static: bool = _doc(
        "take base_frame <- input frame from /tf_static instead of sensor_xyz/rpy/quaternion (needs the tf2_msgs "
        "package; frames are skipped and counted until the transform arrives)", False)


@dataclass
class OccupancyConfig:
    resolution: float = _doc("cell size in metres", 0.5)
    size_x: float = _doc("grid extent along x in metres", 100.0)
    size_y: float = _doc("grid extent along y in metres", 100.0)
    origin_x: float = _doc("x of the grid's lower-left corner in the base frame (frame.base_frame)", -50.0)
    origin_y: float = _doc("y of the grid's lower-left corner in the base frame (frame.base_frame)", -50.0)
    z_min: float = _doc("ignore points below this height (base frame), metres", -3.0)
    z_max: float = _doc("ignore points above this height (base frame), metres", 3.0)
    obstacle_classes: list[str] = _doc(
        "class names marked occupied and published on ~/output/obstacles (empty = every class that is not "
        "ground-like)", factory=list)
    ray_cast: bool = _doc(
        "mark free the cells each beam crosses from the sensor to its hit (2-D, in the grid plane), as a planner "
        "expects; false: free only where ground points lie. Occupied cells stay occupied, cells no beam crosses "
        "stay unknown (-1)", True)


@dataclass
class DiagnosticsConfig:
    budget_ms: float = _doc("processing time budget per scan; median above it -> WARN", 100.0)
    error_budget_ms: float = _doc("median processing time above this -> ERROR", 250.0)
    period_s: float = _doc("diagnostics publication period", 1.0)
    stale_after_s: float = _doc("no scan for this long -> WARN", 3.0)


@dataclass
class NoveltyConfig:
    enabled: bool = _doc(
        "score every frame's novelty against the checkpoint's reference (ssl3d-novelty-ref, ssl3d-pretrain, "
        "ssl3d-finetune write one) and publish it on ~/output/novelty; without a reference in the checkpoint "
        "novelty is off", True)
    threshold: float = _doc(
        "a frame is novel above this score (1.0 = the reference's 95th-percentile frame; held-back frames of the "
        "reference data score below 1)", 1.2)
    window: int = _doc("recent frames the WARN diagnostic looks at", 20)
    warn_share: float = _doc(
        "/diagnostics WARN when at least this share of the last `window` frames is over the threshold", 0.5)
    per_point: bool = _doc(
        "add a float32 `novelty` field to ~/output/segmentation: each point's voxel distance to the nearest "
        "reference prototype (1.0 = the reference voxels' 95th percentile; 0 where class_id is 255)", False)


@dataclass
class NodeConfig:
    """The perception node's parameters (``config/perception.yaml``), usable offline."""

    checkpoint: str = _doc("checkpoint .safetensors path ('' = the default checkpoint shipped with the package)",
                           "")
    device: Literal["auto", "cuda", "cpu"] = _doc("inference device; auto = CUDA when available", "auto")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = _doc(
        "inference precision; auto = fp16 on CUDA, fp32 on CPU", "auto")
    cpu_threads: int = _doc(
        "torch CPU threads; 0 = adaptive (1..cores: keeps the count whose frames measured cheapest, trying one "
        "fewer after a frame twice as dear or a 15 % rise (kept if 25 % cheaper), one more after a 15 % fall (kept if "
        "10 % cheaper), both every 50-800 frames; "
        "one more only while other processes leave a core free), N = always N", 0)
    retain_freed_memory: bool = _doc(
        "keep memory freed between frames in the process heap (glibc malloc) instead of returning it to the "
        "OS, so large frames do not page-fault every buffer again; resident memory stays at its high-water mark",
        True)
    input: InputConfig = field(default_factory=InputConfig)
    preprocessing: PreprocessingOverrides = field(default_factory=PreprocessingOverrides)
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    frame: FrameConfig = field(default_factory=FrameConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    novelty: NoveltyConfig = field(default_factory=NoveltyConfig)


def validate_node_config(cfg: NodeConfig) -> NodeConfig:
    """Range checks beyond types; raises ConfigError naming the parameter."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"parameter '{name}': {what}")

    p, o, d = cfg.preprocessing, cfg.occupancy, cfg.diagnostics
    need(cfg.cpu_threads >= 0, "cpu_threads", f"must be >= 0 (0 = adaptive), got {cfg.cpu_threads}")
    need(cfg.input.qos.depth >= 1, "input.qos.depth", f"must be >= 1, got {cfg.input.qos.depth}")
    need(cfg.input.intensity_scale >= 0, "input.intensity_scale", "must be >= 0 (0 = auto)")
    need(cfg.input.max_points >= -1, "input.max_points",
         f"must be >= -1 (-1 = auto, 0 = no limit), got {cfg.input.max_points}")
    need(p.voxel_size >= 0, "preprocessing.voxel_size", f"must be >= 0 (0 = checkpoint's), got {p.voxel_size}")
    need(p.max_range >= 0, "preprocessing.max_range", f"must be >= 0 (0 = checkpoint's), got {p.max_range}")
    need(p.max_range == 0 or p.min_range < p.max_range, "preprocessing.min_range",
         f"{p.min_range} is not below max_range {p.max_range}")
    need(p.max_points >= 0, "preprocessing.max_points", f"must be >= 0 (0 = checkpoint's), got {p.max_points}")
    need(cfg.kmeans.clusters >= 2, "kmeans.clusters", f"must be >= 2, got {cfg.kmeans.clusters}")
    need(cfg.kmeans.clusters < NO_CLASS, "kmeans.clusters",
         f"must be <= {NO_CLASS - 1} (class_id {NO_CLASS} marks invalid points)")
    need(cfg.embeddings.dims >= -1, "embeddings.dims", f"must be >= -1 (-1 = auto, 0 = all), got {cfg.embeddings.dims}")
    for i, c in enumerate(cfg.classes.colors):
        need(bool(_HEX_COLOR.match(c)), f"classes.colors[{i}]", f"{c!r} is not '#rrggbb'")
    validate_frame_config(cfg.frame)
    need(o.resolution > 0, "occupancy.resolution", f"must be > 0, got {o.resolution}")
    need(o.size_x > 0 and o.size_y > 0, "occupancy.size_x/size_y", "must be > 0")
    cells = math.ceil(o.size_x / o.resolution) * math.ceil(o.size_y / o.resolution) if o.resolution > 0 else 0
    need(cells <= 16_000_000, "occupancy.resolution", f"grid of {cells} cells is too large (max 16M)")
    need(o.z_min < o.z_max, "occupancy.z_min", f"{o.z_min} is not below z_max {o.z_max}")
    need(d.budget_ms > 0, "diagnostics.budget_ms", "must be > 0")
    need(d.error_budget_ms >= d.budget_ms, "diagnostics.error_budget_ms", "must be >= budget_ms")
    need(d.period_s > 0, "diagnostics.period_s", "must be > 0")
    need(d.stale_after_s > 0, "diagnostics.stale_after_s", "must be > 0")
    n = cfg.novelty
    need(n.threshold > 0 and math.isfinite(n.threshold), "novelty.threshold", f"must be > 0, got {n.threshold}")
    need(1 <= n.window <= 10_000, "novelty.window", f"must be within 1..10000 frames, got {n.window}")
    need(0 < n.warn_share <= 1, "novelty.warn_share", f"must be in (0, 1], got {n.warn_share}")
    return cfg


def validate_frame_config(f: FrameConfig) -> None:
    """The sensor mounting: a base frame needs exactly one orientation (or /tf_static), finite numbers of
    the right length; without a base frame nothing may be set. Raises ConfigError naming the key."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"parameter 'frame.{name}': {what}")

    for name, length in (("sensor_xyz", 3), ("sensor_rpy", 3), ("sensor_quaternion", 4)):
        values = getattr(f, name)
        need(len(values) in ((length,) if name == "sensor_xyz" else (0, length)), name,
             f"needs {length} numbers, got {len(values)}")
        need(all(math.isfinite(v) for v in values), name, f"{values} has a value that is not finite")
    if f.sensor_quaternion:
        need(math.fsum(v * v for v in f.sensor_quaternion) > 1e-12, "sensor_quaternion",
             "is all zeros: not a rotation ([0.0, 0.0, 0.0, 1.0] is no rotation)")
    pose_given = bool(f.sensor_rpy or f.sensor_quaternion) or any(f.sensor_xyz)
    if not f.base_frame:
        need(not pose_given and not f.tf_static, "base_frame",
             "is empty (points stay in the input's frame) but a sensor pose or tf_static is set; name the base "
             "frame the pose is given in")
    elif f.tf_static:
        need(not pose_given, "tf_static",
             "is true: the pose comes from /tf_static, so leave sensor_xyz/sensor_rpy/sensor_quaternion unset")
    else:
        need(bool(f.sensor_rpy) != bool(f.sensor_quaternion), "sensor_rpy" if not f.sensor_quaternion else "sensor_quaternion",
             "give exactly one of frame.sensor_rpy and frame.sensor_quaternion for base_frame "
             f"{f.base_frame!r} ([0.0, 0.0, 0.0] rpy for a sensor aligned with it)")


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


def leaf_parameters(cls: type = NodeConfig, prefix: str = "") -> list[tuple[str, Any, str, Any]]:
    """(dotted name, default, description, type) of every scalar/list field of a config tree."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            leaves += leaf_parameters(tp, name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        doc = f.metadata.get("doc", "")
        if typing.get_origin(tp) is typing.Literal:
            doc += f" (one of {', '.join(map(str, typing.get_args(tp)))})"
        leaves.append((name, default, doc, tp))
    return leaves


def is_list_parameter(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def unknown_parameters(given: typing.Iterable[str]) -> list[str]:
    """Names in ``given`` that are neither node parameters nor rclpy's own (a typo must not pass)."""
    known = {name for name, *_ in leaf_parameters()}
    return sorted(
        n for n in given
        if n not in known and n not in FOREIGN_PARAMETERS and not n.startswith("qos_overrides.")
    )


USAGE = """usage: ssl3d-perception [--help] [--managed] [--exit-with-parent] --ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r ~/input/points:=TOPIC]

The ssl3d_ros perception node: subscribes ~/input/points (sensor_msgs/PointCloud2) and publishes
~/output/segmentation, ~/output/embeddings, ~/output/visualization (the input's header and points),
~/output/occupancy (nav_msgs/OccupancyGrid, transient local) and ~/output/obstacles (x, y, z of the
obstacle-class points, for a nav2 costmap) in the base frame (frame.base_frame), ~/output/novelty
(geometry_msgs/Vector3Stamped, the input's header: x the frame's novelty score, y the share of its
voxels over 1.0, z the share of the last novelty.window frames over novelty.threshold; when the
checkpoint has a novelty reference), ~/debug/processing_time_ms, ~/debug/pipeline_latency_ms,
~/debug/stage_time_ms and /diagnostics.
Example: ssl3d-perception --ros-args --params-file config/perception.yaml -r ~/input/points:=/points
A depth camera (optical frame) 1.2 m up on base_link, looking along its x axis:
  -p frame.base_frame:=base_link -p "frame.sensor_xyz:=[0.0, 0.0, 1.2]" -p "frame.sensor_quaternion:=[-0.5, 0.5, -0.5, 0.5]"

--managed: a lifecycle (managed) node for nav2-style bring-up: configure loads and warms up the model,
activate subscribes (`ros2 lifecycle set /ssl3d_perception configure`, then `activate`).
--exit-with-parent: stop (as on SIGTERM) when the process that started the node exits, however it
ended (Linux); perception.launch.py passes it, so the node never outlives its `ros2 launch`.

SIGINT or SIGTERM stops the node cleanly at any moment, start-up included (its threads stopped, the
node destroyed, rclpy shut down).
exit status: 0 after a normal shutdown (SIGINT, SIGTERM), 2 when the configuration or checkpoint is
refused at start-up (one line on stderr names the parameter or file) or when rclpy, a message package
or torch cannot be imported (one line names the Python that lacks it).

parameters (config/perception.yaml documents the same):"""


def node_usage() -> str:
    """``ssl3d-perception --help``: usage, topics, exit status and one line per parameter."""
    lines = [USAGE] + [f"  {name} (default {default!r}): {doc}" for name, default, doc, _ in leaf_parameters()]
    return "\n".join(lines)


def apply_preprocessing_overrides(pre: Any, cfg: NodeConfig) -> Any:
    """The checkpoint's PreprocessConfig ``pre`` with the node's non-default overrides applied
    (0 / negative = keep the checkpoint's value); the replacement re-validates the combination."""
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


__all__ = [
    "AUTO_EMBEDDING_DIMS", "DEFAULT_MAX_INPUT_POINTS", "FOREIGN_PARAMETERS", "USAGE", "QosConfig", "InputConfig",
    "PreprocessingOverrides", "ClassesConfig", "KMeansConfig", "EmbeddingsConfig", "FrameConfig", "OccupancyConfig",
    "DiagnosticsConfig", "NoveltyConfig", "NodeConfig", "validate_node_config", "validate_frame_config",
    "node_config_from_params", "load_node_config", "leaf_parameters", "is_list_parameter",
    "unknown_parameters", "node_usage", "apply_preprocessing_overrides",
]
