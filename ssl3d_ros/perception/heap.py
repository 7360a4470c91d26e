"""Keep freed memory in the process heap between frames (glibc malloc only).

A frame of a 120k-point scan allocates and frees tens of MB of tensors. With glibc's defaults the
large blocks are mmap-ed and returned to the kernel on free, so the next frame touches fresh pages
again: about 6,000 minor page faults per HDL-64 frame here. Raising the mmap and trim thresholds
keeps those pages in the heap and reuses them (the advice of ROS 2's real-time guide for C++
nodes; here through ``mallopt``). The cost: resident memory stays at its high-water mark, which
torch's 64-byte-aligned blocks push to a few times one frame's largest buffers during the first
frames (test_heap.py: 30 rounds of a 48 MB block settle below 1 GB, then never fault again).
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (larger ones are still mmap-ed); freed memory up to this
# size stays in the heap. 256 MiB covers every per-frame tensor of a 4M-point cloud's nano forward.
RETAIN_BYTES = 256 << 20


def retain_freed_memory(limit_bytes: int = RETAIN_BYTES) -> bool:
    """Set glibc's mmap and trim thresholds to ``limit_bytes``; False where malloc is not glibc's."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, limit_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, limit_bytes))


__all__ = ["RETAIN_BYTES", "retain_freed_memory"]
