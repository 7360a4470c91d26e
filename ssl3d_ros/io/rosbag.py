"""rosbag2 (mcap, sqlite3) scan source for PointCloud2 topics, and a rosbag2 scan writer.

``BagSource`` indexes a bag once (topic, timestamp, rank among equal timestamps per message) and
reads one message per ``source[i]``. A bag rosbags cannot read (a recorder killed mid-write: an
``.mcap`` without summary/footer, a cut ``.db3``, a corrupt chunk) is indexed by ``bag_recovery``
instead: its readable messages are kept and ``truncated`` says why. Sources hold no open files: rosbags Readers (file handles,
sqlite connections) must never be shared across DataLoader workers, so each process opens the bags
it reads into its own small LRU cache (``open_reader``), and a forked child drops the parent's.

The bag conventions that need no open bag (PointCloud2 type and typestore, topic selection,
metadata.yaml, scan -> PointCloud2 message) are in ``bag_format``; they are re-exported here, so
importers keep using ``ssl3d_ros.io.rosbag``.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from ..codec import scan_from_cloud
from ..scan import Scan
# Names imported here but unused (cloud_fields, split_stamp, which sim/cli imports) are re-exports:
# importers keep using ssl3d_ros.io.rosbag for every bag name.
from .bag_format import (  # noqa: F401
    INTENSITY_SCALE_KEY, POINTCLOUD2, cloud_fields, decompress_message, default_typestore,
    intensity_scales_from, recorded_intensity_scales, scan_to_cloud_message, select_topics, split_stamp,
    storage_files, topic_connections,
)
from .bag_recovery import RecoveredIndex, RecoveredStorage, RecoveryError, recover
from .errors import ScanReadError
from .source import check_index

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ per-process reader cache

MAX_OPEN_READERS = 8  # per process; pretraining may index thousands of bags
_open_readers: "OrderedDict[str, Reader]" = OrderedDict()
_open_readers_pid: int | None = None
_open_readers_lock = threading.Lock()


def _cached(key: str, opener: Any) -> Any:
    """This process's open object under ``key``, opened by ``opener()`` on first use (LRU-bounded)."""
    global _open_readers, _open_readers_pid
    with _open_readers_lock:
        if _open_readers_pid != os.getpid():
            _open_readers, _open_readers_pid = OrderedDict(), os.getpid()
        reader = _open_readers.get(key)
        if reader is not None:
            _open_readers.move_to_end(key)
            return reader
        reader = opener()
        _open_readers[key] = reader
        while len(_open_readers) > MAX_OPEN_READERS:
            _, oldest = _open_readers.popitem(last=False)
            oldest.close()
        return reader


def open_reader(path: Path) -> Reader:
    """This process's open Reader for ``path`` (least recently used ones beyond the limit are closed).

    Raises ScanReadError when the bag cannot be opened. After a fork the parent's readers are
    forgotten, not closed: their handles belong to the parent.
    """

    def opener() -> Reader:
        try:
            reader = Reader(path)
            reader.open()
        except Exception as exc:  # noqa: BLE001 - missing files, bad metadata, bad storage
            raise ScanReadError(path, f"cannot open rosbag2: {type(exc).__name__}: {exc}") from None
        return reader

    return _cached(str(path), opener)


def _close_cached(key: str) -> None:
    with _open_readers_lock:
        if _open_readers_pid == os.getpid():
            reader = _open_readers.pop(key, None)
            if reader is not None:
                reader.close()


def close_reader(path: Path) -> None:
    """Close this process's reader for ``path``, if open (a later read reopens it)."""
    _close_cached(str(path))


def open_reader_count() -> int:
    """How many bags this process has open."""
    return len(_open_readers) if _open_readers_pid == os.getpid() else 0


class BagSource:
    """The PointCloud2 messages of a rosbag2 folder or ``.mcap``/``.db3`` file, read lazily.

    Index ``i`` follows the bag's timestamp order over the chosen topics. ``label_field`` names the
    per-point field holding labels (None: no labels). A message that does not deserialize or decode
    raises ScanReadError on ``source[i]``. A header stamp of 0 is replaced by the bag timestamp.
    ``intensity_scale`` sets ``Scan.intensity_scale`` (e.g. 255 for Ouster reflectivity); by default
    it is the one BagWriter recorded in metadata.yaml for the topic, else None.

    Damaged bags: when rosbags cannot open the storage or fails while indexing it, the messages are
    indexed by a record scan of the ``.mcap`` / a read-only sqlite read of the ``.db3``
    (``bag_recovery``); ``truncated`` is then set and a warning names the bag and the count. Each
    unreadable stretch (the cut tail, a chunk that does not decompress) is one index entry whose
    ``source[i]`` raises ScanReadError, so ``iter_scans``/replay count it once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        topics: Sequence[str] | None = None,
        label_field: str | None = None,
        intensity_scale: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.label_field = label_field
        self.truncated: str | None = None  # why indexing stopped early, for a damaged bag
        self._recovered: RecoveredIndex | None = None  # set when the bag was read by bag_recovery

        try:
            reader = open_reader(self.path)
        except ScanReadError as error:
            recovered = self._recover(error.reason)
            if isinstance(recovered, str):
                raise ScanReadError(self.path, f"{error.reason}; {recovered}") from None
            self._index_recovered(recovered, topics, intensity_scale)
            return
        available: dict[str, str] = {}
        for conn in reader.connections:  # a topic counts as PointCloud2 if any connection carries it
            if available.get(conn.topic) != POINTCLOUD2:
                available[conn.topic] = conn.msgtype
        self.topics = select_topics(available, topics, str(self.path))
        recorded = recorded_intensity_scales(reader)
        self.intensity_scales = {
            t: intensity_scale if intensity_scale is not None else recorded.get(t) for t in self.topics
        }
        topic_ids = {t: k for k, t in enumerate(self.topics)}

        topic_of: list[int] = []
        stamps: list[int] = []
        ranks: list[int] = []
        seqs: list[int] = []
        per_topic = [0] * len(self.topics)
        last: dict[tuple[int, int], int] = {}
        try:
            # One pass reading the chosen topics only; data is dropped at once (nothing kept in memory).
            for conn, stamp, _ in reader.messages(topic_connections(reader, self.topics)):
                tid = topic_ids[conn.topic]
                key = (tid, stamp)
                rank = last.get(key, -1) + 1
                last[key] = rank
                topic_of.append(tid)
                stamps.append(stamp)
                ranks.append(rank)
                seqs.append(per_topic[tid])
                per_topic[tid] += 1
        except Exception as exc:  # noqa: BLE001 - rosbags raises many types for damaged storage
            reason = f"{type(exc).__name__}: {exc}"
            recovered = self._recover(f"reading failed: {reason}")
            if not isinstance(recovered, str):
                close_reader(self.path)
                self._index_recovered(recovered, topics, intensity_scale)
                return
            self.truncated = reason
            log.warning("%s: bag unreadable after %d messages, using those: %s (%s)",
                        self.path, len(stamps), exc, recovered)
        self.topic_index = np.asarray(topic_of, dtype=np.int32)
        self.stamps_ns = np.asarray(stamps, dtype=np.int64)
        self._ranks = np.asarray(ranks, dtype=np.int32)
        self._seqs = np.asarray(seqs, dtype=np.int64)
        self.message_counts = {t: per_topic[k] for k, t in enumerate(self.topics)}

    # ---------------------------------------------------------------- damaged bags

    def _recover(self, why: str) -> "RecoveredIndex | str":
        """The readable messages of a bag rosbags could not read (bag_recovery), or why there are none."""
        files, self._message_compression, self._custom = storage_files(self.path)
        if not files:
            return "no .mcap/.db3 storage files to recover messages from"
        try:
            recovered = recover(files, POINTCLOUD2)
        except RecoveryError as exc:
            return f"recovery found nothing readable: {exc}"
        self.truncated = f"recovered by a record scan after rosbags failed ({why})"
        return recovered

    def _index_recovered(self, rec: RecoveredIndex, topics: Sequence[str] | None,
                         intensity_scale: float | None) -> None:
        """The index over recovered messages; each unreadable region becomes one entry that raises."""
        self._recovered = rec
        self.topics = select_topics(rec.available, topics, str(self.path))
        recorded = intensity_scales_from(self._custom)
        self.intensity_scales = {
            t: intensity_scale if intensity_scale is not None else recorded.get(t) for t in self.topics
        }
        topic_ids = {t: k for k, t in enumerate(self.topics)}
        tids = np.fromiter((topic_ids.get(t, -1) for t in rec.topic), dtype=np.int32, count=len(rec.topic))
        keep = np.flatnonzero(tids >= 0)
        n_bad = len(rec.problems)
        positions = np.concatenate([keep, -1 - np.arange(n_bad)]).astype(np.int64)
        stamps = np.concatenate([rec.stamp[keep], np.asarray([p[1] for p in rec.problems], dtype=np.int64)])
        topic_of = np.concatenate([tids[keep], np.zeros(n_bad, dtype=np.int32)])
        order = np.argsort(stamps, kind="stable")  # file order among equal stamps, like rosbags
        self._positions = positions[order]
        self.stamps_ns = stamps[order]
        self.topic_index = topic_of[order].astype(np.int32)
        self._ranks = np.zeros(len(order), dtype=np.int32)
        self._seqs = np.full(len(order), -1, dtype=np.int64)
        counts = {}
        for k, topic in enumerate(self.topics):
            mine = (self.topic_index == k) & (self._positions >= 0)
            self._seqs[mine] = np.arange(int(mine.sum()))
            counts[topic] = int(mine.sum())
        self.message_counts = counts
        state = "storage complete" if rec.complete else "storage truncated"
        log.warning("%s: damaged bag (%s): recovered %d messages on %s; %d unreadable region(s)%s",
                    self.path, state if not n_bad else f"{state}, unreadable data",
                    int(sum(counts.values())), self.topics, n_bad,
                    "".join(f"; {p[2]}" for p in rec.problems[:3]))

    def close(self) -> None:
        """Close this process's reader of the bag (a later ``source[i]`` reopens it)."""
        close_reader(self.path)
        if self._recovered is not None:
            _close_cached(self._recovered_key)

    @property
    def _recovered_key(self) -> str:
        return f"recovered:{self.path}:{self._recovered.token}"

    def __enter__(self) -> "BagSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- ScanSource

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def describe(self, index: int) -> str:
        index = check_index(index, len(self))
        if self._recovered is not None and self._positions[index] < 0:
            return f"{self.path}:<damaged data {-1 - int(self._positions[index])}>"
        return f"{self.path}:{self.topics[self.topic_index[index]]}#{self._seqs[index]}"

    def topic(self, index: int) -> str:
        return self.topics[self.topic_index[check_index(index, len(self))]]

    def raw_message(self, index: int) -> bytes:
        """The serialized CDR bytes of message ``index``."""
        index = check_index(index, len(self))
        if self._recovered is not None:
            return self._recovered_message(index)
        topic = self.topics[self.topic_index[index]]
        stamp = int(self.stamps_ns[index])
        reader = open_reader(self.path)
        try:
            # Timestamp-bounded query: mcap reads only the chunks spanning it, sqlite3 filters by timestamp.
            for rank, (_, _, raw) in enumerate(reader.messages(topic_connections(reader, [topic]), stamp, stamp + 1)):
                if rank == self._ranks[index]:
                    return raw
        except Exception as exc:  # noqa: BLE001
            raise ScanReadError(self.describe(index), f"storage read failed: {type(exc).__name__}: {exc}") from None
        raise ScanReadError(self.describe(index), "message no longer in the bag (bag changed since indexing?)")

    def _recovered_message(self, index: int) -> bytes:
        rec, position = self._recovered, int(self._positions[index])
        if position < 0:
            raise ScanReadError(self.describe(index), rec.problems[-1 - position][2])
        storage = _cached(self._recovered_key, lambda: RecoveredStorage(rec))
        try:
            data = storage.read(position)
            if self._message_compression == "zstd":
                data = decompress_message(data)
        except Exception as exc:  # noqa: BLE001 - file, sqlite and decompressor errors
            raise ScanReadError(self.describe(index), f"storage read failed: {type(exc).__name__}: {exc}") from None
        return data

    def message(self, index: int) -> Any:
        """Message ``index`` deserialized with the Humble typestore."""
        raw = self.raw_message(index)
        try:
            return default_typestore().deserialize_cdr(raw, POINTCLOUD2)
        except Exception as exc:  # noqa: BLE001 - the CDR decoder raises struct/index/value errors
            raise ScanReadError(self.describe(index), f"cannot deserialize {POINTCLOUD2}: {type(exc).__name__}: {exc}") from None

    def __getitem__(self, index: int) -> Scan:
        index = check_index(index, len(self))
        msg = self.message(index)
        try:
            scan, _ = scan_from_cloud(msg, label_field=self.label_field)
        except (ValueError, KeyError, TypeError) as exc:  # CloudFormatError is a ValueError
            raise ScanReadError(self.describe(index), f"bad PointCloud2: {exc}") from None
        if scan.stamp_ns == 0:
            scan.stamp_ns = int(self.stamps_ns[index])
        scan.intensity_scale = self.intensity_scales[self.topics[self.topic_index[index]]]
        scan.source = self.describe(index)
        return scan

    def __repr__(self) -> str:
        return f"BagSource({self.path}, {len(self)} messages on {self.topics})"


# ------------------------------------------------------------------------------------ writer

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


class BagWriter:
    """Writes scans (as PointCloud2) and other messages into a new rosbag2 folder.

    ``storage`` is ``"mcap"`` (default) or ``"sqlite3"``; ``version`` the metadata.yaml version
    rosbags writes (8, like the shared data's bag, or 9). Use as a context manager: metadata.yaml
    is written on a clean exit; on an exception the bag is aborted. The path must not exist yet.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        storage: str = "mcap",
        typestore: Any = None,
        version: int = 8,
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        self.typestore = typestore if typestore is not None else default_typestore()
        self._writer = Writer(self.path, version=version, storage_plugin=STORAGES[storage])
        self._connections: dict[str, Any] = {}
        self._intensity_scales: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def open(self) -> "BagWriter":
        self._writer.open()
        close_reader(self.path)  # a reader cached for an earlier bag at this path is stale now
        return self

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.__exit__(exc_type, exc, tb)

    def _connection(self, topic: str, msgtype: str) -> Any:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = conn
            self.counts[topic] = 0
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic!r} already carries {conn.msgtype}, cannot write {msgtype}")
        return conn

    def write_serialized(self, topic: str, msgtype: str, data: bytes | memoryview, stamp_ns: int) -> None:
        """Write already-serialized CDR bytes (copying messages between bags)."""
        self._writer.write(self._connection(topic, msgtype), int(stamp_ns), data)
        self.counts[topic] += 1

    def write_message(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
        """Serialize ``msg`` (a message of this writer's typestore) and write it at ``stamp_ns``."""
        self._connection(topic, msgtype)  # checks the type before serializing
        self.write_serialized(topic, msgtype, self.typestore.serialize_cdr(msg, msgtype), stamp_ns)

    def write_scan(
        self, topic: str, scan: Scan, *, label_field: str | None = "label", label_dtype: Any = np.int32
    ) -> None:
        """Write ``scan`` as a PointCloud2 stamped ``scan.stamp_ns`` in ``scan.frame_id``.

        Labels go into the integer field ``label_field`` (``label_dtype``, int32 by default, or
        uint16); ``scan.intensity_scale`` is recorded per topic in metadata.yaml custom_data.
        """
        msg = scan_to_cloud_message(scan, self.typestore, label_field=label_field, label_dtype=label_dtype)
        self.write_message(topic, POINTCLOUD2, msg, scan.stamp_ns)
        scale = scan.intensity_scale
        if scale is not None and self._intensity_scales.get(topic) != scale:
            if topic in self._intensity_scales:
                log.warning("%s: intensity scale changes %s -> %s; the bag records the last",
                            topic, self._intensity_scales[topic], scale)
            self._intensity_scales[topic] = scale
            self._writer.set_custom_data(INTENSITY_SCALE_KEY + topic, repr(float(scale)))


__all__ = [
    "POINTCLOUD2", "BagSource", "BagWriter", "default_typestore", "select_topics", "scan_to_cloud_message",
    "open_reader", "close_reader", "open_reader_count",
]
