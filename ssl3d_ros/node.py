"""The live perception node: a thin rclpy shell over the library.

It wires topics, parameters, QoS, timers and one worker thread to library functions (:mod:`ssl3d_ros.perception`):
parameters are :mod:`~ssl3d_ros.perception.params`, inference :mod:`~ssl3d_ros.perception.pipeline`, what is
published :mod:`~ssl3d_ros.perception.outputs`, statistics and diagnostics :mod:`~ssl3d_ros.perception.health`. Subscribes
``~/input/points`` (sensor_msgs/PointCloud2), keeps only the newest scan in a one-slot mailbox, and
runs inference on the worker thread so executor callbacks never block; a second thread encodes and
publishes a frame's outputs while the next frame is inferred. Every output carries the
input's stamp (never restamped); per-point clouds carry the input's header and point order
(height/width kept; filtered points have class_id 255 rather than being removed), the occupancy grid
and the obstacle cloud the base frame's name (parameter ``frame.base_frame``), whose pose comes from
the ``frame.*`` parameters or ``/tf_static``.

Run without a ROS distribution::

    ssl3d-perception --ros-args --params-file config/perception.yaml -r ~/input/points:=/points

This is the only module of the package that imports rclpy.
"""
from __future__ import annotations

import array
import dataclasses
import sys
import time
from typing import Any, Callable

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Vector3Stamped
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Float64, Float64MultiArray, Header, MultiArrayDimension

from .codec import fill_cloud_message
from .config import ConfigError
from .perception import (
    BASE_FRAME_OUTPUTS, FINE_STAGES, STAGES, STAMP_PROBLEM_KINDS, ComputedFrame, DiagnosticsPolicy, InferenceWorker,
    NodeConfig, NodeStats, NoveltyMonitor, OutputEncoder, OutputSelection, OutputStage, OverloadMonitor,
    PerceptionPipeline, ThreadGovernor, WarningThrottle, apply_process_settings, frame_failure, frame_timings,
    frame_warnings, header_problems, input_transport_lines, is_list_parameter, leaf_parameters,
    node_config_from_params, node_usage, novelty_reading, resolve_max_input_points, route_python_warnings,
    shared_memory_segment, thread_dependent_ms, transport_values, transport_warning, typical_scan_warning,
    unknown_parameters,
)

NODE_NAME = "ssl3d_perception"
# Outputs: reliable keep-last-1 (the newest result matters), which best-effort and reliable
# subscribers (RViz, planners) both accept.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
# The occupancy grid is latched (transient local): nav2's StaticLayer subscribes to its map that way
# (map_subscribe_transient_local: true, its default) and gets no map from a volatile publisher; a
# subscriber that joins late gets the newest grid at once. Volatile subscribers (RViz) match it too.
OCCUPANCY_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
# /tf_static is latched by its publishers (static_transform_publisher, robot_state_publisher).
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


def tf_message_type() -> type:
    """tf2_msgs/TFMessage, imported only when ``frame.tf_static`` asks for it: the package is not among
    PyPI's ros-* wheels, so a pip install has no /tf_static and takes the mount from parameters."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        raise ConfigError(
            "parameter 'frame.tf_static': /tf_static needs the tf2_msgs message package, which is not installed "
            "here (a ROS distribution has it; PyPI's ros-* wheels do not); give the sensor's pose with "
            "frame.sensor_xyz and frame.sensor_rpy or frame.sensor_quaternion instead") from None
    return TFMessage


def declare_node_parameters(node: Node) -> NodeConfig:
    """Declare every parameter with its description, read them and validate them into a NodeConfig.
    The node declares every override automatically, so a name the parameter file or ``-p`` gave that is
    not one of ours is a typo and stops the node (ConfigError naming it), never silently ignored."""
    values: dict[str, Any] = {}
    for name, default, doc, tp in leaf_parameters(NodeConfig):
        descriptor = ParameterDescriptor(description=doc, read_only=True, dynamic_typing=not is_list_parameter(tp))
        if node.has_parameter(name):  # an override (or a managed node's earlier configure): keep its value
            value = node.get_parameter(name).value
            if not node.describe_parameter(name).read_only:
                # its type is the override's (a list of doubles, of strings): a typeless static descriptor
                # would refuse it, and node_config_from_params checks the type with the key named
                descriptor.dynamic_typing = True
                node.set_descriptor(name, descriptor)
        elif is_list_parameter(tp):
            # Typed without a default: rcl cannot parse an empty YAML list, so "unset" means the default.
            value = node.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor).value
        else:
            # Dynamically typed so that `voxel_size: 1` is accepted as 1.0; types are checked by
            # node_config_from_params with the key named in the error.
            value = node.declare_parameter(name, default, descriptor).value
        if is_list_parameter(tp):  # a non-list override stays as given: the typed config names the key
            value = list(default) if value is None else list(value) if isinstance(value, (list, tuple)) else value
        values[name] = value
    unknown = unknown_parameters(node.list_parameters([], 0).names)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; known: {sorted(values)}")
    return node_config_from_params(values)


def input_qos(cfg: NodeConfig) -> QoSProfile:
    reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.input.qos.depth,
                      reliability=reliability[cfg.input.qos.reliability], durability=DurabilityPolicy.VOLATILE)


class PerceptionShell:
    """What both node flavours do, in the order a lifecycle runs it: ``_configure`` (parameters, model
    loaded and warmed up on the worker thread, publishers), ``_activate`` (subscription, diagnostics
    timer), ``_deactivate`` and ``_shutdown``. Mixed into an rclpy ``Node`` or ``LifecycleNode``."""

    def _configure(self) -> None:
        self.stats = NodeStats()
        self._throttle = WarningThrottle()
        self.subscription = self.diagnostics_timer = None
        config = declare_node_parameters(self)
        # input.max_points (auto) agrees with what the transport carries; the pipeline gets the number in force
        self._segment = shared_memory_segment()
        requested = config.input.max_points
        max_points = resolve_max_input_points(requested, self._segment)
        self.config = dataclasses.replace(config, input=dataclasses.replace(config.input, max_points=max_points))
        tf_message = tf_message_type() if self.config.frame.tf_static else None  # refused before the model loads
        apply_process_settings(self.config.cpu_threads, self.config.retain_freed_memory)
        self._threads = ThreadGovernor(self.config.cpu_threads)
        self._worker = InferenceWorker(self._load, self.process_message, self._frame_failed)
        warm_ms = self._worker.start()
        if not self.context.ok():  # SIGINT/SIGTERM during the load: rclpy has shut down, nothing more to set up
            raise ExternalShutdownException("stopped while loading the model")
        self._output_stage = OutputStage(self.publish_frame, self._frame_failed)
        pipe, log = self.pipeline, self.get_logger()
        self.outputs = OutputEncoder.for_classes(pipe.class_names, pipe.class_colors, self.config)
        self._novelty = NoveltyMonitor(self.config.novelty) if pipe.novelty is not None else None
        self._health = DiagnosticsPolicy(self.config.diagnostics, time.monotonic(), self._novelty)
        self._overload = OverloadMonitor(time.monotonic())
        self._transport_values = transport_values(max_points, self._segment)
        too_big = typical_scan_warning(self.config.embeddings.per_voxel, pipe.embedding_channels, self._segment)
        transport_info, transport_warnings = input_transport_lines(requested, max_points, self._segment,
                                                                   self.config.input.qos.reliability)
        for warning in pipe.warnings + ([too_big] if too_big else []) + transport_warnings:
            log.warning(warning)
        novelty = ("on" if pipe.novelty is not None else
                   "off (novelty.enabled false)" if not self.config.novelty.enabled else
                   "off (the checkpoint has no novelty reference: ssl3d-novelty-ref writes one)")
        log.info(
            f"loaded {pipe.source} on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')}), "
            f"{len(pipe.class_names)} classes, embedding D={pipe.embedding_channels}, novelty {novelty}; "
            f"warm-up {warm_ms:.0f} ms"
        )
        for line in transport_info:
            log.info(line)
        self.publishers_by_output = {
            "segmentation": self.create_publisher(PointCloud2, "~/output/segmentation", OUTPUT_QOS),
            "embeddings": self.create_publisher(PointCloud2, "~/output/embeddings", OUTPUT_QOS),
            "visualization": self.create_publisher(PointCloud2, "~/output/visualization", OUTPUT_QOS),
            "occupancy": self.create_publisher(OccupancyGrid, "~/output/occupancy", OCCUPANCY_QOS),
            "obstacles": self.create_publisher(PointCloud2, "~/output/obstacles", OUTPUT_QOS),
            # header-carrying (std_msgs has no stamped float): x score, y voxel share, z recent share
            "novelty": self.create_publisher(Vector3Stamped, "~/output/novelty", OUTPUT_QOS),
        }
        self.tf_static_subscription = None if tf_message is None else self.create_subscription(
            tf_message, "/tf_static", self._on_tf_static, TF_STATIC_QOS)
        self.pub_processing_time = self.create_publisher(Float64MultiArray, "~/debug/processing_time_ms", 10)
        self.pub_latency = self.create_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self.pub_stage_time = self.create_publisher(Float64MultiArray, "~/debug/stage_time_ms", 10)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def _load(self) -> float:
        """Worker thread: build the pipeline and warm it up (ms)."""
        self.pipeline = PerceptionPipeline.from_config(self.config)
        return self.pipeline.warm_up()

    def _activate(self) -> None:
        self.subscription = self.create_subscription(
            PointCloud2, "~/input/points", self._on_cloud, input_qos(self.config)
        )
        self.diagnostics_timer = self.create_timer(self.config.diagnostics.period_s, self._publish_diagnostics)
        self._publish_diagnostics()  # "waiting for first scan" right away
        self.get_logger().info(f"listening on {self.subscription.topic_name} "
                               f"({self.config.input.qos.reliability}, depth {self.config.input.qos.depth})")

    def _deactivate(self) -> None:
        if self.subscription is not None:
            self.destroy_subscription(self.subscription)
        if self.diagnostics_timer is not None:
            self.destroy_timer(self.diagnostics_timer)
        self.subscription = self.diagnostics_timer = None

    def _shutdown(self) -> None:
        for thread in (getattr(self, "_worker", None), getattr(self, "_output_stage", None)):
            if thread is not None:  # inference first: it may be handing a frame to the output stage
                thread.stop()

    def destroy_node(self) -> None:
        self._shutdown()
        super().destroy_node()

    # -- executor thread: only stores the message ---------------------------------------------------

    def _on_tf_static(self, msg: Any) -> None:
        self.pipeline.mounting.static.add_message(msg)

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.stats.received_at(time.monotonic())
        if self._worker.slot.put(msg):
            self.stats.count("dropped")

    # -- worker thread ------------------------------------------------------------------------------

    def _frame_failed(self, msg: PointCloud2 | ComputedFrame, exc: BaseException) -> None:
        counter, message, kind = frame_failure(exc, msg.header.frame_id, self.pipeline.device)
        if isinstance(exc, torch.OutOfMemoryError):  # a (huge) frame did not fit: skip it, free the cache
            self.stats.count("out_of_memory")
            if self.pipeline.device.type == "cuda":
                torch.cuda.empty_cache()
        self.stats.count(counter, message)
        self._warn_throttled(kind, f"{message} (frame skipped; see /diagnostics for counts)")

    def _warn_throttled(self, kind: str, message: str) -> None:
        line = self._throttle.admit(kind, message)
        if line is not None:
            self.get_logger().warning(line)

    def _selection(self) -> OutputSelection:
        return OutputSelection(**{name: pub.get_subscription_count() > 0
                                  for name, pub in self.publishers_by_output.items()})

    def process_message(self, msg: PointCloud2) -> None:
        """Decode and infer one cloud (worker thread), then hand it to the output stage."""
        t_start = time.perf_counter()
        header = msg.header  # same stamp and frame on every output, even a questionable one: never restamped
        problems = header_problems(header.frame_id, header.stamp.sec, header.stamp.nanosec,
                                   self.get_clock().now().nanoseconds)
        if problems:
            self.stats.count_header_problems([p.kind for p in problems])
            for problem in problems:
                self._warn_throttled(f"header:{problem.kind}", problem.message)
        selection = self._selection()
        if not selection.any:
            self.stats.count("skipped")
            return
        threads = self._threads.threads_for_next_frame()
        cloud = self.pipeline.process_cloud(msg, segmentation=selection.needs_classes, embeddings=selection.embeddings,
                                            point_embeddings=not self.config.embeddings.per_voxel,
                                            point_novelty=self.config.novelty.per_point and selection.segmentation)
        result = cloud.result
        self._threads.record(threads, thread_dependent_ms(result.timings_ms), len(result.voxel_coord))
        recent = None
        if self._novelty is not None and result.novelty is not None:
            recent = self._novelty.add(result.novelty)
        total, invalid = result.valid.size, result.valid.size - result.num_valid
        self.stats.add_points(invalid, total, result.points_over_budget, cloud.intensity_missing, msg.is_bigendian)
        for kind, message in frame_warnings(header.frame_id, cloud.xyz, invalid, result.points_over_budget,
                                            self.pipeline.preprocess_cfg.max_points, cloud.intensity_missing,
                                            self.config.input.intensity_field, msg.is_bigendian):
            self._warn_throttled(kind, message)
        stamp_valid = not any(p.kind in STAMP_PROBLEM_KINDS for p in problems)
        self._output_stage.submit(ComputedFrame(header, cloud, selection, (time.perf_counter() - t_start) * 1e3,
                                                stamp_valid, novelty_recent_share=recent))

    # -- output thread ------------------------------------------------------------------------------

    def publish_frame(self, frame: ComputedFrame) -> None:
        """Encode and publish one computed frame's outputs and its timings (output thread)."""
        t_start = time.perf_counter()
        cloud, header = frame.cloud, frame.header
        base_frame = cloud.result.base_frame
        base_header = Header(stamp=header.stamp, frame_id=base_frame) if base_frame else header
        encode_ms = publish_ms = 0.0
        for name, payload, ms in self.outputs.encode(cloud, frame.selection):
            encode_ms += ms
            out_header = base_header if name in BASE_FRAME_OUTPUTS else header
            if name == "occupancy":
                out = occupancy_message(payload, out_header)
            else:
                too_big = transport_warning(name, len(payload.data), self._segment)
                if too_big:
                    self._warn_throttled(f"transport:{name}", too_big)
                out = fill_cloud_message(PointCloud2(), payload, PointField)
                out.header = out_header
            t = time.perf_counter()
            self.publishers_by_output[name].publish(out)
            publish_ms += (time.perf_counter() - t) * 1e3
        reading = novelty_reading(frame) if frame.selection.novelty else None
        if reading is not None:
            t = time.perf_counter()
            self.publishers_by_output["novelty"].publish(novelty_message(reading, header))
            publish_ms += (time.perf_counter() - t) * 1e3
        total_ms = frame.compute_ms + (time.perf_counter() - t_start) * 1e3  # not the wait between the threads
        stages, coarse = frame_timings(cloud.decode_ms, cloud.result.timings_ms, encode_ms, publish_ms, total_ms)
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        latency_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        self.pub_processing_time.publish(_float_array(STAGES, coarse))
        self.pub_stage_time.publish(_float_array(FINE_STAGES, [stages[k] for k in FINE_STAGES]))
        self.pub_latency.publish(Float64(data=latency_ms))
        self.stats.add_frame(stages, total_ms, latency_ms if frame.stamp_valid else None)

    # -- diagnostics --------------------------------------------------------------------------------

    def diagnostic_status(self) -> DiagnosticStatus:
        pipe = self.pipeline
        report = self._health.report(
            self.stats, time.monotonic(),
            {"device": str(pipe.device), "precision": str(pipe.dtype).removeprefix("torch."), "checkpoint": pipe.source,
             # the node's own view of each output's subscribers: DDS matches each side separately, and an
             # output is computed only when this side has matched (a client waits on these before sending)
             **{f"subscribers_{name}": str(pub.get_subscription_count()) for name, pub in self.publishers_by_output.items()},
             **self._transport_values, **self._threads.values()},
            pipe.memory_bytes(),
        )
        return DiagnosticStatus(
            level=bytes([report.level]), name=f"{self.get_name()}: pipeline", message=report.message,
            hardware_id=str(pipe.device), values=[KeyValue(key=k, value=v) for k, v in report.values.items()],
        )

    def _publish_diagnostics(self) -> None:
        overloaded = self._overload.check(self.stats, time.monotonic())
        if overloaded:  # throttled by the monitor itself: one line per window at most
            self.get_logger().warning(overloaded)
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self.pub_diagnostics.publish(msg)


class PerceptionNode(PerceptionShell, Node):
    """The node, configured and active from its construction: parameters -> PerceptionPipeline (loaded
    and warmed up at start-up, before any scan, on the worker thread that later runs every frame), one
    subscription, and the publishers of every output, debug topic and /diagnostics."""

    def __init__(self, **node_kwargs: Any) -> None:
        node_kwargs.setdefault("automatically_declare_parameters_from_overrides", True)
        Node.__init__(self, NODE_NAME, **node_kwargs)
        try:
            self._configure()
            self._activate()
        except Exception:  # a refused configuration, or rclpy shut down by a signal while starting
            self.destroy_node()
            raise


class ManagedPerceptionNode(PerceptionShell, LifecycleNode):
    """The same node as a managed (lifecycle) node, for nav2-style bring-up (``--managed``):
    configure declares the parameters and loads and warms up the model, activate subscribes and
    starts diagnostics, deactivate unsubscribes, cleanup and shutdown stop the worker. A failed
    configure (bad parameter, bad checkpoint) logs its one-line reason and stays unconfigured."""

    def __init__(self, **node_kwargs: Any) -> None:
        node_kwargs.setdefault("automatically_declare_parameters_from_overrides", True)
        LifecycleNode.__init__(self, NODE_NAME, **node_kwargs)

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            self.get_logger().error(f"invalid configuration, staying unconfigured: {exc}")
            self._shutdown()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.on_shutdown(state)
        for pub in [*self.publishers_by_output.values(), self.pub_processing_time, self.pub_latency,
                    self.pub_stage_time, self.pub_diagnostics]:
            self.destroy_publisher(pub)
        if self.tf_static_subscription is not None:
            self.destroy_subscription(self.tf_static_subscription)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._deactivate()
        self._shutdown()
        return TransitionCallbackReturn.SUCCESS


def _float_array(labels: tuple[str, ...], values: list[float]) -> Float64MultiArray:
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=",".join(labels), size=len(labels), stride=len(labels))]
    msg.data = [float(v) for v in values]
    return msg


def occupancy_message(grid, header) -> OccupancyGrid:
    """nav_msgs/OccupancyGrid of an :class:`ssl3d_ros.perception.OccupancyGrid` with ``header`` (the input's
    stamp, the base frame)."""
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


def novelty_message(reading, header) -> Vector3Stamped:
    """geometry_msgs/Vector3Stamped of a :class:`ssl3d_ros.perception.NoveltyReading`, the input's header."""
    out = Vector3Stamped()
    out.header = header
    out.vector.x, out.vector.y, out.vector.z = reading.score, reading.voxel_share, reading.recent_share
    return out


def main(args: list[str] | None = None, stop_requested: Callable[[], bool] = lambda: False) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0) or a refused configuration (exit 2). The executables
    enter through :func:`ssl3d_ros.node_entry.main`, which installs the signal handlers that run before
    rclpy's and passes ``stop_requested``: whether one of those signals came before rclpy was up."""
    argv = list(args if args is not None else sys.argv)
    user_args = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    if "--help" in user_args or "-h" in user_args:
        print(node_usage())
        return 0
    managed = "--managed" in user_args
    rclpy.init(args=argv)  # from here on rclpy's handlers turn SIGINT/SIGTERM into a shutdown of its context
    # Python warnings (numpy, torch) become throttled log lines of the node, not raw blocks on stderr
    route_python_warnings(rclpy.logging.get_logger(NODE_NAME).warning, WarningThrottle())
    try:
        if stop_requested():
            return 0
        try:
            node = ManagedPerceptionNode() if managed else PerceptionNode()
        except Exception as exc:
            if not rclpy.ok():  # stopped while starting: rclpy shut its context down under the node being built
                return 0
            if isinstance(exc, (ConfigError, ValueError, FileNotFoundError)):  # CheckpointError is a ValueError
                print(f"[{NODE_NAME}] invalid configuration, not starting: {exc}", file=sys.stderr, flush=True)
                return 2
            raise
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":  # the executables enter through ssl3d_ros.node_entry (signals, a missing rclpy)
    sys.exit(main())
