"""Whether the node's messages fit the transport: Fast DDS's shared-memory segment and the size of an
embeddings cloud, checked at start-up (a typical scan) and per frame (the node warns; nothing is dropped)."""
from __future__ import annotations

import os
import re
from pathlib import Path

FASTDDS_DEFAULT_SEGMENT = 512 * 1024  # Fast DDS's shared-memory segment without a profile
TYPICAL_SCAN_POINTS = 120_000  # an HDL-64 / OS-1-64 scan, for the start-up estimate


def shared_memory_segment(environ: dict | None = None) -> tuple[int, str] | None:
    """Fast DDS's shared-memory segment size in bytes and where it comes from, or None when another
    middleware is in use (its limits are not known here)."""
    env = os.environ if environ is None else environ
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        return None
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE") or env.get("FASTRTPS_DEFAULT_PROFILES_FILE")
    if not profile:
        return FASTDDS_DEFAULT_SEGMENT, "Fast DDS's default (no FASTDDS_DEFAULT_PROFILES_FILE)"
    try:
        found = re.search(r"<segment_size>\s*(\d+)\s*</segment_size>", Path(profile).read_text(encoding="utf-8"))
    except OSError:
        return FASTDDS_DEFAULT_SEGMENT, f"Fast DDS's default ({profile} is unreadable)"
    if found is None:
        return FASTDDS_DEFAULT_SEGMENT, f"Fast DDS's default ({profile} sets no segment_size)"
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


__all__ = [
    "FASTDDS_DEFAULT_SEGMENT", "TYPICAL_SCAN_POINTS", "shared_memory_segment", "embedding_cloud_bytes",
    "transport_warning", "typical_scan_warning",
]
