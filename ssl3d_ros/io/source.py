"""The lazy, indexable scan-source abstraction shared by file readers and bag readers.

A source only holds an index (paths, or bag topic + timestamp); scans are read on ``source[i]``.
Sources are small picklable objects, so a DataLoader can ship them to worker processes, and each
worker opens what it needs itself.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Iterator, Literal, Protocol, Sequence, runtime_checkable

from ..scan import Scan
from .errors import ScanReadError

log = logging.getLogger(__name__)


@runtime_checkable
class ScanSource(Protocol):
    """A sequence of scans read on demand."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Scan:
        """Read scan ``index``; raises ScanReadError when that one scan is unreadable."""
        ...

    def describe(self, index: int) -> str:
        """Where scan ``index`` comes from (``path`` or ``bag:topic#k``), without reading it."""
        ...


def check_index(index: int, length: int) -> int:
    """A non-negative index into a sequence of ``length`` items (negative counts from the end)."""
    if not isinstance(index, int):
        index = int(index)  # numpy integers from samplers
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"scan index {index} out of range for a source of {length} scans")
    return index


class ConcatSource:
    """Several sources seen as one; index ``i`` goes to the source that holds it."""

    def __init__(self, sources: Sequence[ScanSource]) -> None:
        self.sources = list(sources)
        self._ends: list[int] = []
        total = 0
        for source in self.sources:
            total += len(source)
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def locate(self, index: int) -> tuple[ScanSource, int]:
        """The source holding global ``index`` and the index within it."""
        index = check_index(index, len(self))
        which = bisect.bisect_right(self._ends, index)
        start = self._ends[which - 1] if which else 0
        return self.sources[which], index - start

    def __getitem__(self, index: int) -> Scan:
        source, local = self.locate(index)
        return source[local]

    def describe(self, index: int) -> str:
        source, local = self.locate(index)
        return source.describe(local)

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __repr__(self) -> str:
        return f"ConcatSource({len(self.sources)} sources, {len(self)} scans)"


@dataclass
class SkipStats:
    """What ``iter_scans`` skipped: how many scans and why (``(description, reason)`` pairs)."""

    skipped: int = 0
    reasons: list[tuple[str, str]] = field(default_factory=list)

    def add(self, error: ScanReadError) -> None:
        self.skipped += 1
        self.reasons.append((error.path, error.reason))


def iter_scans(
    source: ScanSource,
    on_error: Literal["skip", "raise"] = "skip",
    stats: SkipStats | None = None,
) -> Iterator[Scan]:
    """Yield every scan of ``source`` in order.

    With ``on_error="skip"`` an unreadable scan is logged (warning), counted in ``stats`` and
    skipped, so one corrupt file or message never ends a run; with ``"raise"`` the
    ScanReadError propagates.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    for index in range(len(source)):
        try:
            scan = source[index]
        except ScanReadError as error:
            if on_error == "raise":
                raise
            if stats is not None:
                stats.add(error)
            log.warning("skipping scan %d: %s", index, error)
            continue
        yield scan


__all__ = ["ScanSource", "ConcatSource", "SkipStats", "iter_scans", "check_index"]
