"""Whether the node's messages fit the transport: Fast DDS's shared-memory segment and the size of an
embeddings cloud, checked at start-up (a typical scan) and per frame (the node warns; nothing is dropped);
and the input side: the largest cloud the segment carries, the ``input.max_points`` it implies (auto) and
the start-up lines and ``/diagnostics`` values that say so.

A best-effort sample travels in its SENDER's segment (measured here: a receiver without any profile got
20 MB clouds from a sender with the 64 MiB profile, and a sender without one got nothing above 0.5 MB
through, whatever the receiver's profile), and a sample that does not fit is lost without a trace at
the receiver. The node cannot see its senders' segments: it assumes they use its own profile, as the
README asks, and says what that carries. Reliable samples that do not fit travel as UDP fragments."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .params import DEFAULT_MAX_INPUT_POINTS

FASTDDS_DEFAULT_SEGMENT = 512 * 1024  # Fast DDS's shared-memory segment without a profile
DEFAULT_SEGMENT_SOURCE = "Fast DDS's default"  # how shared_memory_segment names a segment no profile set
TYPICAL_SCAN_POINTS = 120_000  # an HDL-64 / OS-1-64 scan, for the start-up estimate
TYPICAL_POINT_STEP = 16  # x, y, z, intensity float32: the layout input.max_points (auto) is sized for
OUSTER_POINT_STEP = 48  # an Ouster driver's point (x, y, z, intensity, t, reflectivity, ring, ambient, range)
# Room in the segment for everything but the cloud's data: measured, a PointCloud2 with 67,099,984 bytes
# of data passed through a 67,108,864-byte segment best-effort; 64 KiB leaves a margin for its fields.
SEGMENT_MARGIN = 64 * 1024


def shared_memory_segment(environ: dict | None = None) -> tuple[int, str] | None:
    """Fast DDS's shared-memory segment size in bytes and where it comes from, or None when another
    middleware is in use (its limits are not known here)."""
    env = os.environ if environ is None else environ
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        return None
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE") or env.get("FASTRTPS_DEFAULT_PROFILES_FILE")
    if not profile:
        return FASTDDS_DEFAULT_SEGMENT, f"{DEFAULT_SEGMENT_SOURCE} (no FASTDDS_DEFAULT_PROFILES_FILE)"
    try:
        found = re.search(r"<segment_size>\s*(\d+)\s*</segment_size>", Path(profile).read_text(encoding="utf-8"))
    except OSError:
        return FASTDDS_DEFAULT_SEGMENT, f"{DEFAULT_SEGMENT_SOURCE} ({profile} is unreadable)"
    if found is None:
        return FASTDDS_DEFAULT_SEGMENT, f"{DEFAULT_SEGMENT_SOURCE} ({profile} sets no segment_size)"
    return int(found.group(1)), profile


def embedding_cloud_bytes(points: int, dims: int) -> int:
    """Size of an embeddings cloud: x, y, z and ``dims`` float32 per point."""
    return points * (12 + 4 * dims)


def transport_warning(name: str, size: int, segment: tuple[int, str] | None) -> str | None:
    """A warning when one ``name`` message of ``size`` bytes cannot fit the shared-memory segment."""
    if segment is None or size <= segment[0]:
        return None
    return (f"output {name}: a {size / 1e6:.1f} MB message exceeds the {segment[0] / 2**20:.0f} MiB shared-memory "
            f"segment ({segment[1]}); it travels as UDP fragments or not at all. Lower embeddings.dims or set "
            "embeddings.per_voxel, or enlarge the segment for every process that sends or receives it")


def typical_scan_warning(per_voxel: bool, dims: int, segment: tuple[int, str] | None) -> str | None:
    """At start-up: the usual trap, full per-point embeddings of a real scan, before the first scan shows it."""
    if per_voxel:  # bounded by the voxel budget
        return None
    too_big = transport_warning("embeddings", embedding_cloud_bytes(TYPICAL_SCAN_POINTS, dims), segment)
    return f"{too_big} (estimate for a {TYPICAL_SCAN_POINTS}-point scan, D = {dims})" if too_big else None


def segment_from_profile(segment: tuple[int, str] | None) -> bool:
    """Whether a Fast DDS profile set the segment (not Fast DDS's default, not another middleware)."""
    return segment is not None and not segment[1].startswith(DEFAULT_SEGMENT_SOURCE)


def largest_cloud_bytes(segment: tuple[int, str] | None) -> int | None:
    """The largest PointCloud2 data (bytes) a best-effort sender with ``segment`` delivers; None: not known."""
    return None if segment is None else max(segment[0] - SEGMENT_MARGIN, 0)


def resolve_max_input_points(requested: int, segment: tuple[int, str] | None) -> int:
    """``input.max_points`` in force: ``requested`` unless it is -1 (auto). Auto is
    :data:`~.params.DEFAULT_MAX_INPUT_POINTS`, lowered to the points of :data:`TYPICAL_POINT_STEP` bytes
    that a profile's segment carries, so that the node never admits a 16-byte-point cloud its senders
    (with the same profile) cannot deliver. Without a profile the default segment says nothing about the
    senders' (the README asks them for the profile), so auto stays the default; the node warns instead."""
    if requested >= 0:
        return requested
    if not segment_from_profile(segment):
        return DEFAULT_MAX_INPUT_POINTS
    return min(DEFAULT_MAX_INPUT_POINTS, largest_cloud_bytes(segment) // TYPICAL_POINT_STEP)


def _segment_size(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def input_transport_lines(requested: int, max_points: int, segment: tuple[int, str] | None,
                          reliability: str) -> tuple[list[str], list[str]]:
    """What the node logs at start-up about its input's transport: (info lines, warning lines)."""
    limit = f"input.max_points = {max_points}" + (" (auto)" if requested < 0 else "") + (" (no limit)" if max_points == 0 else "")
    if segment is None:
        rmw = os.environ.get("RMW_IMPLEMENTATION", "")
        return [f"input transport: {rmw}, whose size limits are not known here; {limit}"], []
    largest = largest_cloud_bytes(segment)
    info = [(f"input transport: a best-effort cloud travels in its sender's Fast DDS shared-memory segment; one like "
             f"this node's ({_segment_size(segment[0])}, {segment[1]}) carries clouds of up to {largest / 1e6:.1f} MB: "
             f"{largest // TYPICAL_POINT_STEP} points at {TYPICAL_POINT_STEP} B/point (x, y, z, intensity float32), "
             f"{largest // OUSTER_POINT_STEP} at {OUSTER_POINT_STEP} B/point (Ouster); a larger one vanishes in "
             f"transport without a trace here{' (reliable input: it travels as UDP fragments)' if reliability == 'reliable' else ''}. "
             f"{limit}")]
    warnings = []
    if not segment_from_profile(segment):
        warnings.append(
            f"no Fast DDS profile sets the shared-memory segment ({segment[1]}): a best-effort cloud above "
            f"{largest / 1e6:.1f} MB from a sender without a profile never arrives, nor does a larger output of this "
            "node at a best-effort subscriber. Export FASTDDS_DEFAULT_PROFILES_FILE=<share>/ssl3d_ros/config/"
            "fastdds_large_data.xml (64 MiB) for this node and for every sender (the launch file sets it for the node)")
    elif reliability == "best_effort" and (max_points == 0 or max_points * TYPICAL_POINT_STEP > largest):
        admitted = "clouds of any size" if max_points == 0 else \
            f"clouds of up to {max_points * TYPICAL_POINT_STEP / 1e6:.1f} MB at {TYPICAL_POINT_STEP} B/point"
        warnings.append(
            f"input.max_points = {max_points} admits {admitted}, more than the {largest / 1e6:.1f} MB the "
            f"{_segment_size(segment[0])} shared-memory segment carries: a larger cloud from a best-effort sender "
            "vanishes in transport without a trace here. Set input.max_points: -1 (auto), or enlarge segment_size "
            "in the profile of this node and of every sender")
    return info, warnings


def transport_values(max_points: int, segment: tuple[int, str] | None) -> dict[str, str]:
    """The ``/diagnostics`` key/values of the input's transport limits."""
    largest = largest_cloud_bytes(segment)
    return {
        "input_max_points": str(max_points),
        "transport_segment_bytes": "unknown" if segment is None else str(segment[0]),
        "transport_segment_source": "unknown" if segment is None else segment[1],
        "transport_max_cloud_bytes": "unknown" if largest is None else str(largest),
        f"transport_max_cloud_points_{TYPICAL_POINT_STEP}b": "unknown" if largest is None else str(largest // TYPICAL_POINT_STEP),
    }


__all__ = [
    "FASTDDS_DEFAULT_SEGMENT", "DEFAULT_SEGMENT_SOURCE", "TYPICAL_SCAN_POINTS", "TYPICAL_POINT_STEP",
    "OUSTER_POINT_STEP", "SEGMENT_MARGIN", "shared_memory_segment", "embedding_cloud_bytes", "transport_warning",
    "typical_scan_warning", "segment_from_profile", "largest_cloud_bytes", "resolve_max_input_points",
    "input_transport_lines", "transport_values",
]
