"""Where each scan of the inputs comes from, known without reading it: file or bag, topic, index, stamp.

``scan_refs`` walks the sources ``io.open_sources`` opened (bags, folders of any reader's files, single
files) and gives each scan a ``ScanRef``: what the ranked list prints, what the embedding cache is keyed
by, and which time-ordered stream (a folder of files, a bag topic) uniform-in-time spaces its picks over.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ... import io
from ...io import ConcatSource, FileSource, ScanSource


@dataclass(frozen=True)
class ScanRef:
    """One scan of the pool.

    position: its index in the pool (all inputs, in the order given).
    input: the path it was found under, as given on the command line.
    location: the scan file, or the bag (folder or storage file).
    topic: the bag topic ('' for files).
    index: the message's number on its topic (bags), the file's number in its folder listing (files).
    stamp_ns: the bag's timestamp of the message; None for files (their stamp is known once read).
    stream: the time-ordered stream it belongs to ('folder' or 'bag:topic').
    identity: what identifies its content for the cache (path, size and mtime; bag, topic, number, stamp).
    """

    position: int
    input: str
    location: str
    topic: str
    index: int
    stamp_ns: int | None
    stream: str
    identity: str


def _leaves(source: ScanSource) -> list[ScanSource]:
    if isinstance(source, ConcatSource):
        return [leaf for inner in source.sources for leaf in _leaves(inner)]
    return [source]


def _file_identity(path: str) -> str:
    resolved = Path(path).resolve()
    try:
        info = os.stat(resolved)
    except OSError:  # vanished since indexing: reading it will say so
        return f"file:{resolved}"
    return f"file:{resolved}:{info.st_size}:{info.st_mtime_ns}"


def _refs_of_leaf(leaf: ScanSource, given: str, start: int) -> list[ScanRef]:
    if isinstance(leaf, FileSource):
        refs = []
        for k, entry in enumerate(leaf.entries):
            refs.append(ScanRef(start + k, given, entry.path, "", k, None, str(Path(entry.path).parent),
                                _file_identity(entry.path)))
        return refs
    rosbag = sys.modules.get(f"{io.__name__}.rosbag")  # loaded whenever a bag was opened, never otherwise
    if rosbag is not None and isinstance(leaf, rosbag.BagSource):
        bag = str(leaf.path)
        resolved = Path(bag).resolve()
        numbers: dict[str, int] = {}
        refs = []
        for k in range(len(leaf)):
            topic = leaf.topic(k)
            number = numbers.get(topic, 0)
            numbers[topic] = number + 1
            stamp = int(leaf.stamps_ns[k])
            refs.append(ScanRef(start + k, given, bag, topic, number, stamp, f"{bag}:{topic}",
                                f"bag:{resolved}:{topic}:{number}:{stamp}"))
        return refs
    # Another ScanSource: its own description is the identity (nothing cached across changed content).
    return [ScanRef(start + k, given, leaf.describe(k), "", k, None, given, f"source:{leaf.describe(k)}")
            for k in range(len(leaf))]


def scan_refs(pool: ConcatSource, inputs: Sequence[str]) -> list[ScanRef]:
    """One ``ScanRef`` per scan of ``pool``, the ``ConcatSource`` that ``open_sources(inputs)`` returned."""
    if len(pool.sources) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(pool.sources)} sources")
    refs: list[ScanRef] = []
    for given, source in zip(inputs, pool.sources):
        for leaf in _leaves(source):
            refs += _refs_of_leaf(leaf, str(given), len(refs))
    if len(refs) != len(pool):
        raise ValueError(f"indexed {len(refs)} scans of a pool of {len(pool)}")
    return refs


def streams_of(refs: Sequence[ScanRef]) -> list[list[int]]:
    """Pool positions per stream, each in time order (file name order, bag timestamp order)."""
    streams: dict[str, list[int]] = {}
    for ref in refs:
        streams.setdefault(ref.stream, []).append(ref.position)
    return list(streams.values())


__all__ = ["ScanRef", "scan_refs", "streams_of"]
