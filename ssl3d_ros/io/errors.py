"""Errors raised by scan sources."""
from __future__ import annotations


class ScanReadError(Exception):
    """One scan (a file, or one message of a bag) could not be read.

    ``path`` names what was being read (a file, or ``bag:topic#k``), ``reason`` why it failed.
    The arguments are passed to ``Exception`` so the error pickles across DataLoader workers.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read scan {self.path}: {self.reason}"


class TopicSelectionError(ValueError):
    """A requested bag topic does not exist or does not carry sensor_msgs/msg/PointCloud2."""


class NoScansError(ValueError):
    """A path (a folder, a bag) holds no scans at all; the message starts with the path."""


class UnknownScanFileError(ValueError):
    """A file given as a scan is of no known scan format; the message starts with the path."""


__all__ = ["ScanReadError", "TopicSelectionError", "NoScansError", "UnknownScanFileError"]
