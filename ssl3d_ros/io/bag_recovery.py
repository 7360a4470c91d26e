"""Recovery of the readable messages of a damaged rosbag2 storage file (a recorder killed mid-write).

rosbags needs an ``.mcap`` file's summary and footer, and fails on a cut ``.db3``. Here:

- ``.mcap``: a linear scan of the records after the magic (opcode u8, length u64, body): Schema
  (0x03) and Channel (0x04) records name the topics, Message (0x05) records are indexed where they
  lie, Chunks (0x06; '', 'lz4' or 'zstd') are decompressed and their records scanned the same way.
  The scan stops at the Footer or at the first incomplete record; a chunk cut by the end of the
  file is decompressed as far as its bytes go and its complete records are kept. A chunk that does
  not decompress (or fails its CRC) is skipped and reported.
- ``.db3``: the database is opened read-only with the sqlite3 module and the ``messages`` rows are
  read by id in batches; a batch that raises ``sqlite3.DatabaseError`` (pages cut off) is reported
  and reading resumes at the next id sqlite can reach.

Only locations are kept (file, chunk, offset, length or row id), never message data:
``RecoveredIndex`` is small and picklable, and ``RecoveredStorage`` (one per process) reads one
message from it, keeping the last decompressed chunks.
"""
from __future__ import annotations

import logging
import mmap
import os
import sqlite3
import struct
import uuid
from binascii import crc32
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x02, 0x03, 0x04, 0x05, 0x06
_RECORD = struct.Struct("<BQ")  # opcode, body length
_MESSAGE = struct.Struct("<HIQ")  # channel id, sequence, log time (then publish time, data)
MESSAGE_HEADER = 22


class RecoveryError(Exception):
    """Nothing could be recovered from a storage file (not mcap/sqlite, or no topics readable)."""


def _lz4_decompress(data: bytes, partial: bool) -> bytes:
    import lz4.frame

    if not partial:
        return lz4.frame.decompress(data)
    return lz4.frame.LZ4FrameDecompressor().decompress(data)


def _zstd_decompress(data: bytes, partial: bool) -> bytes:
    try:
        from backports import zstd  # what rosbags itself uses (Python < 3.14)
    except ImportError:
        try:
            from compression import zstd  # type: ignore[no-redef]  # Python >= 3.14
        except ImportError:
            zstd = None
    if zstd is not None:
        return zstd.ZstdDecompressor().decompress(data) if partial else zstd.decompress(data)
    import zstandard  # type: ignore[import-not-found]

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def decompress_chunk(data: bytes, compression: str, size: int, crc: int, complete: bool) -> bytes:
    """The records of a chunk; for a chunk cut by the end of the file (``complete`` False) as many
    bytes as its compressed prefix gives. Raises ValueError for a bad chunk."""
    if compression == "":
        raw = bytes(data)
    elif compression == "lz4":
        raw = _lz4_decompress(data, not complete)
    elif compression == "zstd":
        raw = _zstd_decompress(data, not complete)
    else:
        raise ValueError(f"unsupported chunk compression {compression!r}")
    if complete:
        if len(raw) != size:
            raise ValueError(f"chunk decompresses to {len(raw)} bytes, its header says {size}")
        if crc and crc32(raw) != crc:
            raise ValueError("chunk CRC mismatch")
    return raw[:size]


@dataclass
class RecoveredIndex:
    """What was recovered from a bag's storage files, as locations (picklable, no open files).

    Per message (file order): ``file`` (index into ``files``), ``chunk`` (index into ``chunks``,
    -1 for a record outside chunks), ``offset``/``length`` of the serialized data (in the
    decompressed chunk or the file; for sqlite3 ``offset`` is the row id), ``stamp`` (ns) and
    ``topic``. ``problems`` lists ``(where, stamp_ns, reason)`` per unreadable region;
    ``complete`` is False when a file ended before its end marker.
    """

    kind: str  # "mcap" or "sqlite3"
    files: list[str]
    available: dict[str, str] = field(default_factory=dict)  # topic -> message type
    chunks: list[tuple[int, int, int, str, int, int, bool]] = field(default_factory=list)
    file: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    chunk: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stamp: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    topic: list[str] = field(default_factory=list)
    problems: list[tuple[str, int, str]] = field(default_factory=list)
    complete: bool = True
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this index in reader caches

    def __len__(self) -> int:
        return len(self.stamp)


class _Collector:
    """Appends message locations (plain lists while scanning; arrays at the end)."""

    def __init__(self) -> None:
        self.file: list[int] = []
        self.chunk: list[int] = []
        self.offset: list[int] = []
        self.length: list[int] = []
        self.stamp: list[int] = []
        self.topic: list[str] = []
        self.last_stamp = 0

    def finish(self, index: RecoveredIndex) -> RecoveredIndex:
        index.file = np.asarray(self.file, dtype=np.int32)
        index.chunk = np.asarray(self.chunk, dtype=np.int32)
        index.offset = np.asarray(self.offset, dtype=np.int64)
        index.length = np.asarray(self.length, dtype=np.int64)
        index.stamp = np.asarray(self.stamp, dtype=np.int64)
        index.topic = self.topic
        return index


# ------------------------------------------------------------------------------------- mcap


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise ValueError("string runs past its record")
    return bytes(buf[pos + 4:end]).decode("utf-8", "replace"), end


class _McapScanner:
    def __init__(self, index: RecoveredIndex, out: _Collector, wanted_type: str) -> None:
        self.index, self.out, self.wanted_type = index, out, wanted_type
        self.schemas: dict[int, str] = {}  # schema id -> name
        self.channels: dict[int, str] = {}  # channel id -> topic, for channels of the wanted type
        self.msg_encoding_ok: dict[int, bool] = {}

    def schema(self, buf, body: int) -> None:
        (sid,) = struct.unpack_from("<H", buf, body)
        self.schemas[sid], _ = _string(buf, body + 2)

    def channel(self, buf, body: int) -> None:
        cid, sid = struct.unpack_from("<HH", buf, body)
        topic, pos = _string(buf, body + 4)
        encoding, _ = _string(buf, pos)
        msgtype = self.schemas.get(sid, "")
        if self.index.available.get(topic) != self.wanted_type:
            self.index.available[topic] = msgtype
        if msgtype == self.wanted_type and encoding == "cdr":
            self.channels[cid] = topic

    def records(self, buf, start: int, end: int, fid: int, chunk: int) -> int:
        """Index the records in ``buf[start:end]``; returns where the complete records stop."""
        channels, out = self.channels, self.out
        pos = start
        while pos + 9 <= end:
            op, n = _RECORD.unpack_from(buf, pos)
            body = pos + 9
            if body + n > end:
                break
            if op == OP_MESSAGE and n >= MESSAGE_HEADER:
                cid, _, stamp = _MESSAGE.unpack_from(buf, body)
                topic = channels.get(cid)
                if topic is not None:
                    out.file.append(fid)
                    out.chunk.append(chunk)
                    out.offset.append(body + MESSAGE_HEADER)
                    out.length.append(n - MESSAGE_HEADER)
                    out.stamp.append(stamp)
                    out.topic.append(topic)
                out.last_stamp = stamp
            elif op == OP_SCHEMA or op == OP_CHANNEL:
                try:
                    (self.schema if op == OP_SCHEMA else self.channel)(buf, body)
                except (struct.error, ValueError) as exc:
                    log.debug("malformed mcap record %#x at %d: %s", op, pos, exc)
            pos = body + n
        return pos


def scan_mcap(path: Path, fid: int, index: RecoveredIndex, out: _Collector, wanted_type: str) -> None:
    """Index the readable messages of one (possibly truncated) mcap file into ``index``/``out``."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size < len(MCAP_MAGIC):
            raise RecoveryError(f"{path}: {size} bytes, not an mcap file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[: len(MCAP_MAGIC)] != MCAP_MAGIC:
                raise RecoveryError(f"{path}: no mcap magic")
            scanner = _McapScanner(index, out, wanted_type)
            pos = len(MCAP_MAGIC)
            ended = reported = False
            while pos + 9 <= size:
                op, n = _RECORD.unpack_from(mm, pos)
                body, end = pos + 9, pos + 9 + n
                if op == OP_FOOTER:
                    ended = True
                    break
                if op == OP_CHUNK:
                    if not _chunk(mm, path, fid, pos, body, min(end, size), end <= size, index, scanner):
                        reported = True
                        break
                elif end > size:
                    break
                elif op in (OP_MESSAGE, OP_SCHEMA, OP_CHANNEL):
                    scanner.records(mm, pos, end, fid, -1)
                pos = end
            if not ended:
                index.complete = False
                if pos < size and not reported:
                    index.problems.append((f"{path}@{pos}", out.last_stamp,
                                           f"truncated mcap: {size - pos} bytes at offset {pos} of {size} "
                                           "are an incomplete record"))


def _chunk(mm, path: Path, fid: int, pos: int, body: int, end: int, complete: bool,
           index: RecoveredIndex, scanner: _McapScanner) -> bool:
    """Index one chunk record; False when the file ends inside it (after salvaging what it can)."""
    try:
        start_t, _, usize, crc = struct.unpack_from("<QQQI", mm, body)
        compression, cpos = _string(mm, body + 28)
        (clen,) = struct.unpack_from("<Q", mm, cpos)
    except (struct.error, ValueError):
        index.problems.append((f"{path}@{pos}", scanner.out.last_stamp,
                               f"truncated mcap: chunk header at offset {pos} cut by the end of the file"))
        return False
    data_start = cpos + 8
    data_end = min(data_start + clen, end)
    whole = complete and data_start + clen <= end
    where = f"{path}@{pos}"
    try:
        raw = decompress_chunk(mm[data_start:data_end], compression, usize, crc, whole)
    except Exception as exc:  # noqa: BLE001 - lz4/zstd raise their own error types
        cut = "" if complete else " (cut by the end of the file)"
        index.problems.append((where, start_t, f"chunk at offset {pos}{cut} unreadable: {type(exc).__name__}: {exc}"))
        return complete
    index.chunks.append((fid, data_start, data_end - data_start, compression, usize, crc, whole))
    cid = len(index.chunks) - 1
    stop = scanner.records(raw, 0, len(raw), fid, cid)
    if not whole:
        lost = f"{usize - stop} of {usize} bytes" if stop < usize else "its end"
        index.problems.append((where, scanner.out.last_stamp,
                               f"truncated mcap: chunk at offset {pos} cut by the end of the file ({lost} lost)"))
        return False
    if stop != len(raw):
        index.problems.append((where, start_t, f"chunk at offset {pos}: {len(raw) - stop} bytes of incomplete records"))
    return True


# ----------------------------------------------------------------------------------- sqlite3


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection that accepts a file shorter than its header says (a cut ``.db3``).

    sqlite refuses such a file as malformed unless ``writable_schema`` is on; the connection is
    read-only, so nothing is ever written. Pages beyond the end still fail when they are read.
    """
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    con.execute("PRAGMA writable_schema=ON")
    return con


def scan_sqlite(path: Path, fid: int, index: RecoveredIndex, out: _Collector, wanted_type: str) -> None:
    """Index the readable rows of a (possibly truncated) rosbag2 ``.db3``."""
    try:
        con = connect_readonly(path)
    except sqlite3.Error as exc:
        raise RecoveryError(f"{path}: sqlite cannot open it: {exc}") from None
    try:
        try:
            topics = con.execute("SELECT id, name, type FROM topics").fetchall()
        except sqlite3.Error as exc:
            raise RecoveryError(f"{path}: topics table unreadable: {exc}") from None
        names = {}
        for tid, name, msgtype in topics:
            if index.available.get(name) != wanted_type:
                index.available[name] = msgtype
            if msgtype == wanted_type:
                names[tid] = name
        if not names:
            return
        ids = ",".join(str(int(t)) for t in names)
        query = f"SELECT id, topic_id, timestamp FROM messages WHERE id > ? AND topic_id IN ({ids}) ORDER BY id"
        last = -(2**63)
        fresh = True  # rows were read since the last damaged stretch (one problem per stretch)
        while True:
            try:
                for rowid, tid, stamp in con.execute(query, (last,)):  # row by row: keep all before an error
                    out.file.append(fid)
                    out.chunk.append(-1)
                    out.offset.append(rowid)
                    out.length.append(-1)
                    out.stamp.append(stamp)
                    out.topic.append(names[tid])
                    out.last_stamp, last, fresh = stamp, rowid, True
                break
            except sqlite3.DatabaseError as exc:  # pages past the end of a cut file, or damaged
                index.complete = False
                if fresh:
                    where = f"after row id {last}" if last != -(2**63) else "from the first row"
                    index.problems.append((f"{path}#{where}", out.last_stamp,
                                           f"truncated or damaged sqlite3: messages {where} unreadable: {exc}"))
                fresh = False
                resumed = _next_readable_id(con, last)
                if resumed is None:
                    break
                last = resumed - 1
    finally:
        con.close()


def _next_readable_id(con: sqlite3.Connection, after: int) -> int | None:
    """The first row id beyond a damaged stretch that sqlite can still reach (probing ever further)."""
    step = 2
    while step < 2**62:
        try:
            row = con.execute("SELECT id FROM messages WHERE id > ? ORDER BY id LIMIT 1", (after + step,)).fetchone()
        except sqlite3.DatabaseError:
            step *= 2
            continue
        return None if row is None else int(row[0])
    return None


# -------------------------------------------------------------------------------- entry points


def recover(files: list[Path], wanted_type: str) -> RecoveredIndex:
    """Index what is readable in ``files`` (``.mcap`` and ``.db3``, one bag's storage files).

    Raises RecoveryError when no file gives any topic at all.
    """
    kinds = {".mcap": "mcap", ".db3": "sqlite3"}
    index = RecoveredIndex(kind=kinds.get(files[0].suffix, "mcap") if files else "mcap", files=[str(f) for f in files])
    out = _Collector()
    errors = []
    for fid, path in enumerate(files):
        scan = scan_sqlite if path.suffix == ".db3" else scan_mcap
        try:
            scan(path, fid, index, out, wanted_type)
        except RecoveryError as exc:
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    if not index.available:
        raise RecoveryError("; ".join(errors) or "no storage files")
    for error in errors:
        index.problems.append((error.split(":", 1)[0], out.last_stamp, error))
    return out.finish(index)


class RecoveredStorage:
    """One process's reader of a RecoveredIndex: open files and the last decompressed chunks."""

    CACHED_CHUNKS = 2

    def __init__(self, index: RecoveredIndex) -> None:
        self.index = index
        self._files: dict[int, object] = {}
        self._chunks: "OrderedDict[int, bytes]" = OrderedDict()

    def _handle(self, fid: int):
        handle = self._files.get(fid)
        if handle is None:
            path = Path(self.index.files[fid])
            if path.suffix == ".db3":
                handle = connect_readonly(path)
            else:
                handle = open(path, "rb")  # noqa: SIM115 - closed in close()
            self._files[fid] = handle
        return handle

    def _chunk(self, cid: int) -> bytes:
        raw = self._chunks.get(cid)
        if raw is not None:
            self._chunks.move_to_end(cid)
            return raw
        fid, start, length, compression, usize, crc, whole = self.index.chunks[cid]
        data = os.pread(self._handle(fid).fileno(), length, start)  # no shared file position
        if len(data) != length:
            raise ValueError(f"chunk at {start}: file now ends after {len(data)} of {length} bytes")
        raw = decompress_chunk(data, compression, usize, crc, whole)
        self._chunks[cid] = raw
        while len(self._chunks) > self.CACHED_CHUNKS:
            self._chunks.popitem(last=False)
        return raw

    def read(self, position: int) -> bytes:
        """The serialized data of recovered message ``position`` (file order). Raises on failure."""
        fid, cid = int(self.index.file[position]), int(self.index.chunk[position])
        offset, length = int(self.index.offset[position]), int(self.index.length[position])
        handle = self._handle(fid)
        if isinstance(handle, sqlite3.Connection):
            row = handle.execute("SELECT data FROM messages WHERE id = ?", (offset,)).fetchone()
            if row is None:
                raise ValueError(f"row {offset} no longer in the database")
            return bytes(row[0])
        if cid >= 0:
            raw = self._chunk(cid)
            if offset + length > len(raw):
                raise ValueError("message runs past its chunk")
            return raw[offset:offset + length]
        data = os.pread(handle.fileno(), length, offset)
        if len(data) != length:
            raise ValueError(f"file now ends inside the message at offset {offset}")
        return data

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._chunks.clear()


__all__ = ["RecoveredIndex", "RecoveredStorage", "RecoveryError", "recover", "decompress_chunk"]
