"""Per-frame perception without rclpy: what the node (:mod:`ssl3d_ros.node`) runs, the replay and the tests too.

- :mod:`.params`: the node's parameter tree (:class:`NodeConfig`), read from ROS parameters or YAML;
- :mod:`.pipeline`: checkpoint + preprocessing + heads, one frame at a time (:class:`PerceptionPipeline`);
- :mod:`.mounting`: the sensor's pose on the robot, points into the gravity-aligned base frame;
- :mod:`.results`: a frame's per-point results (:class:`FrameResult`, :class:`CloudResult`);
- :mod:`.outputs`: what is published, as pure functions of a frame's results (clouds, colours, grid);
- :mod:`.transport`: whether a message fits Fast DDS's shared-memory segment, the largest input it carries;
- :mod:`.headers`: what is wrong with an input cloud's header;
- :mod:`.health`: the node's counters, its ``/diagnostics`` policy and what it logs (throttled);
- :mod:`.worker`: the hand-over between the executor thread and the inference and output threads;
- :mod:`.cpu_threads`: how many torch CPU threads a frame gets on a shared CPU (:class:`ThreadGovernor`);
- :mod:`.device`: device, precision, process settings and the pinned staging buffers;
- :mod:`.heap`: glibc heap retention between frames;
- :mod:`.warm_up`: the synthetic scan the pipeline warms up on.

Importers outside the package use ``from ssl3d_ros.perception import …``.
"""
from .cpu_threads import (
    DRIFT, FIRST_PROBE_AFTER, FREE_CORE_SLACK, LOAD_WINDOW_S, MARGIN, MARGIN_FEWER, OtherProcessLoad, MAX_PROBE_BACKOFF, PROBE_EVERY_FRAMES, PROBE_FRAMES, REJECT, SPIKE,
    THREAD_DEPENDENT_STAGES, ThreadGovernor, cpu_quota_cores, thread_dependent_ms, usable_cores,
)
from .device import DeviceStaging, apply_process_settings, resolve_device, resolve_precision
from .headers import (
    FRAME_ID_MAX_CHARS, FUTURE_TOLERANCE_S, HEADER_PROBLEM_KINDS, LOGGED_FRAME_ID_CHARS, NANOSEC_PER_SEC,
    STAMP_PROBLEM_KINDS, HeaderProblem, header_problems, loggable_frame_id,
)
from .health import (
    BIG_ENDIAN_SUSPECT_SHARE, ERROR, FINE_STAGES, OK, OVERLOAD_DROP_SHARE, OVERLOAD_MIN_DROPS, OVERLOAD_WINDOW_S,
    RATE_WINDOW_S, STAGES, WARN, WARN_PERIOD_S, DiagnosticReport, DiagnosticsPolicy, NodeStats, NoveltyMonitor,
    OverloadMonitor, WarningThrottle, big_endian_suspect, frame_timings, frame_warnings, python_warning_line,
    route_python_warnings, rss_bytes, why_no_valid_point,
)
from .heap import RETAIN_BYTES, retain_freed_memory
from .mounting import (
    FrameMounting, Mount, StaticTransforms, TransformUnavailable, mount_from_config, rotation_from_quaternion,
    rotation_from_rpy,
)
from .outputs import (
    BASE_FRAME_OUTPUTS, FREE, GROUND_CLASS_NAMES, INVALID_COLOR, OCCUPIED, OUTPUTS, UNKNOWN, ComputedFrame, NoveltyReading,
    OccupancyGrid, OutputEncoder, OutputSelection, class_color_table, colorize, encode_outputs, free_along_beams,
    novelty_reading, obstacle_lookup, obstacle_points, occupancy_grid, parse_colors,
)
from .params import (
    AUTO_EMBEDDING_DIMS, DEFAULT_MAX_INPUT_POINTS, FOREIGN_PARAMETERS, USAGE, ClassesConfig, DiagnosticsConfig,
    EmbeddingsConfig, FrameConfig, InputConfig, KMeansConfig, NodeConfig, NoveltyConfig, OccupancyConfig,
    PreprocessingOverrides, QosConfig, apply_preprocessing_overrides, is_list_parameter, leaf_parameters,
    load_node_config, node_config_from_params, node_usage, unknown_parameters, validate_frame_config,
    validate_node_config,
)
from .pipeline import CPU_BACKEND, PerceptionPipeline
from .results import CloudResult, FrameResult
from .transport import (
    DEFAULT_SEGMENT_SOURCE, FASTDDS_DEFAULT_SEGMENT, OUSTER_POINT_STEP, SEGMENT_MARGIN, TYPICAL_POINT_STEP,
    TYPICAL_SCAN_POINTS, embedding_cloud_bytes, input_transport_lines, largest_cloud_bytes, resolve_max_input_points,
    segment_from_profile, shared_memory_segment, transport_values, transport_warning, typical_scan_warning,
)
from .warm_up import warm_up_scan
from .worker import InferenceWorker, LatestFrameSlot, OutputStage, frame_failure

__all__ = [
    # cpu_threads
    "ThreadGovernor", "OtherProcessLoad", "FREE_CORE_SLACK", "LOAD_WINDOW_S", "usable_cores", "cpu_quota_cores", "thread_dependent_ms", "THREAD_DEPENDENT_STAGES",
    "PROBE_EVERY_FRAMES", "MAX_PROBE_BACKOFF", "FIRST_PROBE_AFTER", "PROBE_FRAMES", "MARGIN", "MARGIN_FEWER", "DRIFT", "SPIKE",
    "REJECT",
    # device
    "resolve_device", "resolve_precision", "DeviceStaging", "apply_process_settings",
    # headers
    "FRAME_ID_MAX_CHARS", "LOGGED_FRAME_ID_CHARS", "FUTURE_TOLERANCE_S", "NANOSEC_PER_SEC", "HEADER_PROBLEM_KINDS",
    "STAMP_PROBLEM_KINDS", "HeaderProblem", "loggable_frame_id", "header_problems",
    # health
    "OK", "WARN", "ERROR", "STAGES", "FINE_STAGES", "WARN_PERIOD_S", "RATE_WINDOW_S", "BIG_ENDIAN_SUSPECT_SHARE",
    "OVERLOAD_WINDOW_S", "OVERLOAD_MIN_DROPS", "OVERLOAD_DROP_SHARE", "NodeStats", "frame_timings",
    "why_no_valid_point", "big_endian_suspect", "frame_warnings", "WarningThrottle", "NoveltyMonitor", "DiagnosticReport",
    "DiagnosticsPolicy", "OverloadMonitor", "python_warning_line", "route_python_warnings", "rss_bytes",
    # heap
    "RETAIN_BYTES", "retain_freed_memory",
    # mounting
    "Mount", "FrameMounting", "StaticTransforms", "TransformUnavailable", "rotation_from_rpy", "rotation_from_quaternion",
    "mount_from_config",
    # outputs
    "FREE", "OCCUPIED", "UNKNOWN", "OUTPUTS", "BASE_FRAME_OUTPUTS", "GROUND_CLASS_NAMES", "INVALID_COLOR", "parse_colors",
    "class_color_table", "colorize", "OccupancyGrid", "occupancy_grid", "free_along_beams", "obstacle_points",
    "obstacle_lookup", "OutputSelection", "ComputedFrame", "NoveltyReading", "novelty_reading", "OutputEncoder",
    "encode_outputs",
    # params
    "AUTO_EMBEDDING_DIMS", "DEFAULT_MAX_INPUT_POINTS", "FOREIGN_PARAMETERS", "USAGE", "QosConfig", "InputConfig",
    "PreprocessingOverrides", "ClassesConfig", "KMeansConfig", "EmbeddingsConfig", "FrameConfig", "OccupancyConfig",
    "DiagnosticsConfig", "NoveltyConfig", "NodeConfig", "validate_node_config", "validate_frame_config",
    "node_config_from_params", "load_node_config", "leaf_parameters", "is_list_parameter",
    "unknown_parameters", "node_usage", "apply_preprocessing_overrides",
    # pipeline
    "CPU_BACKEND", "PerceptionPipeline",
    # results
    "FrameResult", "CloudResult",
    # transport
    "FASTDDS_DEFAULT_SEGMENT", "DEFAULT_SEGMENT_SOURCE", "TYPICAL_SCAN_POINTS", "TYPICAL_POINT_STEP",
    "OUSTER_POINT_STEP", "SEGMENT_MARGIN", "shared_memory_segment", "embedding_cloud_bytes", "transport_warning",
    "typical_scan_warning", "segment_from_profile", "largest_cloud_bytes", "resolve_max_input_points",
    "input_transport_lines", "transport_values",
    # warm_up
    "warm_up_scan",
    # worker
    "LatestFrameSlot", "frame_failure", "InferenceWorker", "OutputStage",
]
