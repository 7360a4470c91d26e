"""The live perception node: a thin rclpy shell over :mod:`ssl3d_ros.pipeline`.

Subscribes ``~/input/points`` (sensor_msgs/PointCloud2), keeps only the newest scan in a one-slot
mailbox, and runs inference on a worker thread so executor callbacks never block. Every output
carries the input's header (never restamped) and, for per-point clouds, the input's point order
(height/width kept; filtered points have class_id 255 rather than being removed).

Run without a ROS distribution::

    ssl3d-perception --ros-args --params-file config/perception.yaml -r ~/input/points:=/points

This is the only module of the package that imports rclpy.
"""
from __future__ import annotations

import array
import collections
import dataclasses
import os
import re
import sys
import threading
import time
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Float64, Float64MultiArray, MultiArrayDimension

from .config import ConfigError
from .pipeline import (
    NodeConfig,
    PerceptionPipeline,
    colorize,
    node_config_from_params,
    occupancy_grid,
)

NODE_NAME = "ssl3d_perception"
STAGES = ("pre", "inference", "post", "total")  # order of ~/debug/processing_time_ms
# order of ~/debug/stage_time_ms: the finer split (pre = decode + preprocess, post = the rest)
FINE_STAGES = ("decode", "preprocess", "inference", "postprocess", "encode", "publish")
# Rate limit of warnings about bad frames, per kind of problem (see PerceptionNode._warn_throttled).
WARN_PERIOD_S = 10.0
# Parameters rclpy itself declares or reads; not ours to reject.
_FOREIGN_PARAMETERS = ("use_sim_time", "start_type_description_service")


# --------------------------------------------------------------------------------------------------
# Parameters: declared from the NodeConfig dataclass tree (descriptions from its field metadata)
# --------------------------------------------------------------------------------------------------


def _leaf_parameters(cls: type, prefix: str = "") -> list[tuple[str, Any, str, Any]]:
    """(dotted name, default, description, type) of every scalar/list field of a config tree."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            leaves += _leaf_parameters(tp, name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        doc = f.metadata.get("doc", "")
        if typing.get_origin(tp) is typing.Literal:
            doc += f" (one of {', '.join(map(str, typing.get_args(tp)))})"
        leaves.append((name, default, doc, tp))
    return leaves


def declare_node_parameters(node: Node) -> NodeConfig:
    """Declare every parameter with a descriptor, read them and validate them into a NodeConfig.

    Raises ConfigError naming the parameter for wrong types, bad values and unknown parameter names
    (a typo in a parameter file must not be silently ignored).
    """
    values: dict[str, Any] = {}
    for name, default, doc, tp in _leaf_parameters(NodeConfig):
        if typing.get_origin(tp) is list:
            # Typed without a default: rcl cannot parse an empty YAML list, so "unset" means the default.
            descriptor = ParameterDescriptor(description=doc, read_only=True)
            try:
                param = node.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor)
            except Exception as exc:  # InvalidParameterTypeException and friends
                raise ConfigError(f"parameter '{name}': expected a list of strings ({exc})") from None
            values[name] = list(param.value) if param.value is not None else list(default)
        else:
            # Dynamically typed so that `voxel_size: 1` is accepted as 1.0; types are checked by
            # node_config_from_params with the key named in the error.
            descriptor = ParameterDescriptor(description=doc, read_only=True, dynamic_typing=True)
            values[name] = node.declare_parameter(name, default, descriptor).value
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    unknown = sorted(
        n for n in overrides
        if n not in values and n not in _FOREIGN_PARAMETERS and not n.startswith("qos_overrides.")
    )
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; known: {sorted(values)}")
    return node_config_from_params(values)


def input_qos(cfg: NodeConfig) -> QoSProfile:
    reliability = {
        "best_effort": ReliabilityPolicy.BEST_EFFORT,
        "reliable": ReliabilityPolicy.RELIABLE,
    }[cfg.input.qos.reliability]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=cfg.input.qos.depth,
        reliability=reliability,
        durability=DurabilityPolicy.VOLATILE,
    )


# Outputs: reliable keep-last-1 (the newest result matters), which best-effort and reliable
# subscribers (RViz, planners) both accept.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)


# --------------------------------------------------------------------------------------------------
# Latest-frame mailbox and statistics (plain Python, shared between executor and worker threads)
# --------------------------------------------------------------------------------------------------


class LatestFrameSlot:
    """One-slot mailbox: a new frame replaces a waiting one (the replaced one counts as dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced a frame that was still waiting."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The waiting frame (removing it), or None after ``timeout`` or when closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class NodeStats:
    """Counters and recent timings; everything guarded by ``lock``."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the slot before the worker took them
    rejected: int = 0  # malformed clouds (CloudFormatError)
    errors: int = 0  # any other failure while processing a frame
    skipped: int = 0  # no subscriber on any output
    out_of_memory: int = 0  # frames skipped because the device ran out of memory (also in ``errors``)
    no_valid_points: int = 0  # processed frames in which no point survived (empty, all NaN, out of range)
    points_invalid: int = 0  # points marked invalid (class_id 255) over all processed frames
    last_error: str = ""
    last_receive_mono: float | None = None
    receive_times: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=200))
    totals_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=100))
    latency_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=100))
    stage_ms: dict = dataclasses.field(default_factory=dict)  # stage -> deque

    def add_stages(self, stages: dict[str, float]) -> None:
        for k, v in stages.items():
            self.stage_ms.setdefault(k, collections.deque(maxlen=100)).append(v)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------------


class PerceptionNode(Node):
    """Parameters -> PerceptionPipeline (loaded and warmed up at start-up, before any scan, on the
    worker thread that later runs every frame), one subscription, and the publishers of every output,
    debug topic and /diagnostics."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._start_mono = time.monotonic()
        self.stats = NodeStats()
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._last_diag_rejected = 0
        self._last_diag_errors = 0
        # Rate-limited warnings, one period per kind of problem (see _warn_throttled).
        self._warned: collections.OrderedDict[str, list] = collections.OrderedDict()
        self._warn_lock = threading.Lock()
        try:
            self.config = declare_node_parameters(self)
            warm_ms = self._start_worker()
        except Exception:
            self.destroy_node()
            raise
        log = self.get_logger()
        for warning in self.pipeline.warnings:
            log.warning(warning)
        log.info(
            f"loaded {self.pipeline.source} on {self.pipeline.device} ({str(self.pipeline.dtype).removeprefix('torch.')}), "
            f"{len(self.pipeline.class_names)} classes, embedding D={self.pipeline.embedding_channels}; "
            f"warm-up {warm_ms:.0f} ms"
        )

        self.pub_segmentation = self.create_publisher(PointCloud2, "~/output/segmentation", OUTPUT_QOS)
        self.pub_embeddings = self.create_publisher(PointCloud2, "~/output/embeddings", OUTPUT_QOS)
        self.pub_visualization = self.create_publisher(PointCloud2, "~/output/visualization", OUTPUT_QOS)
        self.pub_occupancy = self.create_publisher(OccupancyGrid, "~/output/occupancy", OUTPUT_QOS)
        self.pub_processing_time = self.create_publisher(Float64MultiArray, "~/debug/processing_time_ms", 10)
        self.pub_latency = self.create_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self.pub_stage_time = self.create_publisher(Float64MultiArray, "~/debug/stage_time_ms", 10)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.subscription = self.create_subscription(
            PointCloud2, "~/input/points", self._on_cloud, input_qos(self.config)
        )
        self.diagnostics_timer = self.create_timer(self.config.diagnostics.period_s, self._publish_diagnostics)
        self._publish_diagnostics()  # "waiting for first scan" right away
        log.info(
            f"listening on {self.subscription.topic_name} "
            f"({self.config.input.qos.reliability}, depth {self.config.input.qos.depth})"
        )

    # -- executor thread: only stores the message ---------------------------------------------------

    def _on_cloud(self, msg: PointCloud2) -> None:
        now = time.monotonic()
        with self.stats.lock:
            self.stats.received += 1
            self.stats.last_receive_mono = now
            self.stats.receive_times.append(now)
        if self._slot.put(msg):
            with self.stats.lock:
                self.stats.dropped += 1

    # -- worker thread ------------------------------------------------------------------------------

    def _start_worker(self) -> float:
        """Start the inference thread; it loads and warms up the pipeline before taking any scan.

        Every torch computation of the node runs on that one thread. Torch's OpenMP keeps a thread team
        per calling thread: a warm-up on the executor thread left a second team behind, and with more
        OpenMP threads than cores each parallel region's hand-off slept instead of spinning, which
        made every frame about 1.7x slower on a 2-core CPU. Returns the warm-up time (ms); a failure
        to load is re-raised here, on the caller's thread."""
        ready = threading.Event()
        startup: dict[str, Any] = {}

        def run() -> None:
            try:
                self.pipeline = PerceptionPipeline.from_config(self.config)
                startup["warm_ms"] = self.pipeline.warm_up()
            except BaseException as exc:  # noqa: BLE001 - handed to the constructor, which re-raises
                startup["error"] = exc
                return
            finally:
                ready.set()
            self._work()

        self._worker = threading.Thread(target=run, name="ssl3d_inference", daemon=True)
        self._worker.start()
        ready.wait()
        if "error" in startup:
            self._worker.join()
            raise startup["error"]
        return startup["warm_ms"]

    def _work(self) -> None:
        while not self._stop.is_set():
            msg = self._slot.take(timeout=0.2)
            if msg is None:
                continue
            try:
                self.process_message(msg)
            except torch.OutOfMemoryError as exc:  # CUDA OOM on a (huge) frame: skip it, free the cache
                with self.stats.lock:
                    self.stats.out_of_memory += 1
                if self.pipeline.device.type == "cuda":
                    torch.cuda.empty_cache()
                self._count_failure("errors", f"out of memory on {self.pipeline.device}: {str(exc).splitlines()[0]}",
                                    kind="out_of_memory")
            except Exception as exc:  # never let one frame kill the worker
                self._count_failure("errors", f"processing failed: {type(exc).__name__}: {exc}")

    def _count_failure(self, counter: str, message: str, kind: str | None = None) -> None:
        with self.stats.lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            self.stats.last_error = message
        self._warn_throttled(kind or f"{counter}:{message}", f"{message} (frame skipped; see /diagnostics for counts)")

    def _warn_throttled(self, kind: str, message: str) -> None:
        """Log ``message`` at most once per ``WARN_PERIOD_S`` per kind of problem.

        The kind is the message with its numbers blanked out, so a burst of the same bad cloud logs
        one line per period while a different problem is still reported at once. The first line after
        a quiet period says how many were suppressed. Bounded: at most 128 kinds are remembered.
        """
        key = re.sub(r"\d+", "#", kind)[:200]
        now = time.monotonic()
        with self._warn_lock:
            entry = self._warned.get(key)
            if entry is not None and now - entry[0] < WARN_PERIOD_S:
                entry[1] += 1
                return
            suppressed = entry[1] if entry is not None else 0
            self._warned[key] = [now, 0]
            self._warned.move_to_end(key)
            while len(self._warned) > 128:
                self._warned.popitem(last=False)
        more = f" [{suppressed} more like this in the last {WARN_PERIOD_S:.0f} s]" if suppressed else ""
        self.get_logger().warning(message + more)

    def _wanted(self) -> dict[str, bool]:
        return {
            "segmentation": self.pub_segmentation.get_subscription_count() > 0,
            "embeddings": self.pub_embeddings.get_subscription_count() > 0,
            "visualization": self.pub_visualization.get_subscription_count() > 0,
            "occupancy": self.pub_occupancy.get_subscription_count() > 0,
        }

    def process_message(self, msg: PointCloud2) -> None:
        """Decode, infer, encode and publish one cloud (worker thread)."""
        from .codec import CloudFormatError, encode_cloud, fill_cloud_message

        t_start = time.perf_counter()
        wanted = self._wanted()
        if not any(wanted.values()):
            with self.stats.lock:
                self.stats.skipped += 1
            return
        need_classes = wanted["segmentation"] or wanted["visualization"] or wanted["occupancy"]
        try:
            cloud = self.pipeline.process_cloud(msg, segmentation=need_classes, embeddings=wanted["embeddings"])
        except CloudFormatError as exc:
            self._count_failure("rejected", f"rejected malformed PointCloud2 (frame {msg.header.frame_id!r}): {exc}",
                                kind=f"rejected:{exc}")
            return
        result, xyz, height = cloud.result, cloud.xyz, cloud.height
        header = msg.header  # same stamp and frame on every output: never restamped
        invalid = int(result.valid.size - np.count_nonzero(result.valid))
        with self.stats.lock:
            self.stats.points_invalid += invalid
            if invalid == result.valid.size:
                self.stats.no_valid_points += 1
        if invalid == result.valid.size:  # processed and published anyway (all class_id 255)
            if xyz.size == 0:
                why = "it is empty"
            elif np.isnan(xyz).any(axis=1).all():
                why = "every point has a NaN coordinate"
            elif not np.isfinite(xyz).all(axis=1).any():
                why = "every point has a NaN or Inf coordinate"
            else:
                why = "every point is outside the range limits or has non-finite features"
            self._warn_throttled(
                f"no_valid_points:{why}",
                f"cloud in frame {header.frame_id!r} has no usable point ({result.valid.size} points; {why}); "
                "published with every point invalid (class_id 255)")
        encode_ms = publish_ms = 0.0

        def publish(pub, encoded) -> None:
            nonlocal publish_ms
            out = fill_cloud_message(PointCloud2(), encoded, PointField)
            out.header = header
            t = time.perf_counter()
            pub.publish(out)
            publish_ms += (time.perf_counter() - t) * 1e3

        if wanted["segmentation"]:
            t = time.perf_counter()
            encoded = encode_cloud(
                xyz,
                {"class_id": result.class_id, "probability": result.probability, "entropy": result.entropy},
                height=height,
                align=True,  # x y z class_id(+3 pad) probability entropy = 24 bytes, Autoware's layout
            )
            encode_ms += (time.perf_counter() - t) * 1e3
            publish(self.pub_segmentation, encoded)
        if wanted["visualization"]:
            t = time.perf_counter()
            rgb = colorize(result.class_id, self.pipeline.color_table)
            encoded = encode_cloud(xyz, {"rgb": rgb}, height=height, align=True)
            encode_ms += (time.perf_counter() - t) * 1e3
            publish(self.pub_visualization, encoded)
        if wanted["embeddings"]:
            t = time.perf_counter()
            if self.config.embeddings.per_voxel:
                encoded = encode_cloud(result.voxel_coord, {"embedding": result.voxel_embedding}, align=True)
            else:
                encoded = encode_cloud(xyz, {"embedding": result.embedding}, height=height, align=True)
            encode_ms += (time.perf_counter() - t) * 1e3
            publish(self.pub_embeddings, encoded)
        if wanted["occupancy"]:
            t = time.perf_counter()
            grid = occupancy_grid(xyz, result.class_id, result.valid, self.pipeline.obstacle, self.config.occupancy)
            out = occupancy_message(grid, header)
            encode_ms += (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            self.pub_occupancy.publish(out)
            publish_ms += (time.perf_counter() - t) * 1e3
        t_end = time.perf_counter()

        stages = {
            "decode": cloud.decode_ms,
            "preprocess": result.timings_ms.get("preprocess", 0.0),
            "inference": result.timings_ms.get("inference", 0.0),
            "postprocess": result.timings_ms.get("postprocess", 0.0),
            "encode": encode_ms,
            "publish": publish_ms,
        }
        pre = stages["decode"] + stages["preprocess"]
        total_ms = (t_end - t_start) * 1e3
        post = max(total_ms - pre - stages["inference"], 0.0)
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        latency_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6

        timing = Float64MultiArray()
        timing.layout.dim = [MultiArrayDimension(label=",".join(STAGES), size=len(STAGES), stride=len(STAGES))]
        timing.data = [pre, stages["inference"], post, total_ms]
        self.pub_processing_time.publish(timing)
        fine = Float64MultiArray()
        fine.layout.dim = [MultiArrayDimension(label=",".join(FINE_STAGES), size=len(FINE_STAGES), stride=len(FINE_STAGES))]
        fine.data = [stages[k] for k in FINE_STAGES]
        self.pub_stage_time.publish(fine)
        self.pub_latency.publish(Float64(data=latency_ms))
        with self.stats.lock:
            self.stats.processed += 1
            self.stats.totals_ms.append(total_ms)
            self.stats.latency_ms.append(latency_ms)
            self.stats.add_stages(stages)

    # -- diagnostics --------------------------------------------------------------------------------

    def diagnostic_status(self) -> DiagnosticStatus:
        cfg = self.config.diagnostics
        now = time.monotonic()
        with self.stats.lock:
            s = self.stats
            recent = [t for t in s.receive_times if now - t <= 5.0]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0
            totals = np.asarray(s.totals_ms, float)
            latency = np.asarray(s.latency_ms, float)
            stage_means = {k: float(np.mean(v)) for k, v in s.stage_ms.items() if v}
            counts = dict(received=s.received, processed=s.processed, dropped=s.dropped, rejected=s.rejected,
                          errors=s.errors, skipped_no_subscribers=s.skipped, out_of_memory=s.out_of_memory,
                          without_valid_points=s.no_valid_points)
            points_invalid = s.points_invalid
            last_receive, last_error = s.last_receive_mono, s.last_error
        level, messages = DiagnosticStatus.OK, []

        def raise_to(new_level: bytes, text: str) -> None:
            nonlocal level
            level = max(level, new_level)
            messages.append(text)

        if last_receive is None:
            waited = now - self._start_mono
            if waited > cfg.stale_after_s:
                raise_to(DiagnosticStatus.WARN, f"waiting for first scan ({waited:.0f} s)")
            else:
                messages.append("waiting for first scan")
        elif now - last_receive > cfg.stale_after_s:
            raise_to(DiagnosticStatus.WARN, f"no scan for {now - last_receive:.1f} s")
        median = float(np.median(totals)) if totals.size else 0.0
        if totals.size:
            if median > cfg.error_budget_ms:
                raise_to(DiagnosticStatus.ERROR, f"processing {median:.0f} ms over the error budget {cfg.error_budget_ms:.0f} ms")
            elif median > cfg.budget_ms:
                raise_to(DiagnosticStatus.WARN, f"processing {median:.0f} ms over the budget {cfg.budget_ms:.0f} ms")
        if counts["rejected"] > self._last_diag_rejected:
            raise_to(DiagnosticStatus.WARN, f"{counts['rejected'] - self._last_diag_rejected} malformed cloud(s) rejected")
        if counts["errors"] > self._last_diag_errors:
            raise_to(DiagnosticStatus.WARN, f"{counts['errors'] - self._last_diag_errors} frame(s) failed")
        self._last_diag_rejected, self._last_diag_errors = counts["rejected"], counts["errors"]
        if not messages:
            messages.append("ok")

        values = {
            "input_rate_hz": f"{rate:.2f}",
            "processing_time_ms_median": f"{median:.2f}",
            "processing_time_ms_max": f"{float(totals.max()) if totals.size else 0.0:.2f}",
            "pipeline_latency_ms_median": f"{float(np.median(latency)) if latency.size else 0.0:.2f}",
            "budget_ms": f"{cfg.budget_ms:.1f}",
            "error_budget_ms": f"{cfg.error_budget_ms:.1f}",
            **{f"frames_{k}": str(v) for k, v in counts.items()},
            "points_invalid_total": str(points_invalid),
            **{f"stage_{k}_ms_mean": f"{v:.2f}" for k, v in stage_means.items()},
            "last_error": last_error,
            "device": str(self.pipeline.device),
            "precision": str(self.pipeline.dtype).removeprefix("torch."),
            "checkpoint": self.pipeline.source,
            "memory_rss_mb": f"{_rss_bytes() / 2**20:.1f}",
            **{f"memory_{k}_mb": f"{v / 2**20:.1f}" for k, v in self.pipeline.memory_bytes().items()},
        }
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: pipeline",
            message="; ".join(messages),
            hardware_id=str(self.pipeline.device),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self.pub_diagnostics.publish(msg)

    # -- shutdown -----------------------------------------------------------------------------------

    def destroy_node(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._slot.close()
            worker = getattr(self, "_worker", None)
            if worker is not None and worker.is_alive() and worker is not threading.current_thread():
                worker.join(timeout=10.0)
        super().destroy_node()


def occupancy_message(grid, header) -> OccupancyGrid:
    """nav_msgs/OccupancyGrid of a pipeline grid, in the input's frame and stamp."""
    out = OccupancyGrid()
    out.header = header
    out.info.map_load_time = header.stamp
    out.info.resolution = float(grid.resolution)
    out.info.width, out.info.height = grid.width, grid.height
    out.info.origin.position.x = float(grid.origin_x)
    out.info.origin.position.y = float(grid.origin_y)
    out.info.origin.orientation.w = 1.0
    out.data = array.array("b", grid.data.tobytes())
    return out


USAGE = """usage: ssl3d-perception [--help] --ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r ~/input/points:=TOPIC]

The ssl3d_ros perception node: subscribes ~/input/points (sensor_msgs/PointCloud2) and publishes
~/output/segmentation, ~/output/embeddings, ~/output/visualization, ~/output/occupancy,
~/debug/processing_time_ms, ~/debug/pipeline_latency_ms, ~/debug/stage_time_ms and /diagnostics.
Example: ssl3d-perception --ros-args --params-file config/perception.yaml -r ~/input/points:=/points

parameters (config/perception.yaml documents the same):"""


def usage() -> str:
    lines = [USAGE]
    for name, default, doc, _ in _leaf_parameters(NodeConfig):
        lines.append(f"  {name} (default {default!r}): {doc}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    argv = list(args if args is not None else sys.argv)
    user_args = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    if "--help" in user_args or "-h" in user_args:
        print(usage())
        return 0
    rclpy.init(args=argv)
    try:
        node = PerceptionNode()
    except (ConfigError, ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        print(f"[{NODE_NAME}] invalid configuration, not starting: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
