"""Scan sources (file readers, rosbag2 reader) and the rosbag2 writer.

``open_source(path)`` gives a lazy, indexable ``ScanSource`` for any supported path;
``iter_scans`` walks one, skipping and counting unreadable scans. The bag classes are loaded on
first use so that reading plain files never imports rosbags.
"""
from __future__ import annotations

from .errors import NoScansError, ScanReadError, TopicSelectionError, UnknownScanFileError
from .readers import READERS, FileEntry, FileSource, detect_format, open_source, open_sources
from .source import ConcatSource, ScanSource, SkipStats, iter_scans

_BAG_NAMES = ("BagSource", "BagWriter", "POINTCLOUD2")


def __getattr__(name: str):
    if name in _BAG_NAMES:
        from . import rosbag

        return getattr(rosbag, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ScanReadError", "TopicSelectionError", "NoScansError", "UnknownScanFileError", "ScanSource", "ConcatSource", "SkipStats", "iter_scans",
    "READERS", "FileEntry", "FileSource", "detect_format", "open_source", "open_sources",
    *_BAG_NAMES,
]
