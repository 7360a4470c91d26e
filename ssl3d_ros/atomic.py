"""Atomic file writes for checkpoints, training states and reports.

A file is written under a temporary name in its destination folder, flushed to disk, then renamed
over the destination, and the folder entry is flushed too: a crash, a SIGKILL or a full disk leaves
either the complete old file or the complete new one, never a torn file. The temporary left by a
killed writer is removed by the next atomic write into the same folder.

Test hook: with ``SSL3D_TEST_PAUSE_IN_WRITE=MARKER`` in the environment, every write pauses once its
temporary is complete and flushed, just before the rename: it creates the file MARKER (holding the
temporary's path) and waits until MARKER is deleted. A test can so kill a writer exactly mid-write,
or let writes through one at a time, without depending on the machine's speed. Unset, it costs one
environment look-up per write.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp_path)`` writes the content to a temporary file.

    Any exception (``OSError`` for a full or read-only disk) propagates unchanged after the temporary
    file is removed; an earlier file at ``path`` is then untouched. The new file gets the usual
    permissions (0666 minus the umask) rather than the temporary file's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _pause_for_test(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def json_safe(value: Any) -> Any:
    """JSON-safe data: numpy scalars/arrays to Python, NaN/inf to None (JSON has no NaN), paths to str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` (through :func:`json_safe`) as indented JSON to ``path`` atomically."""
    text = json.dumps(json_safe(data), indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


PAUSE_ENV = "SSL3D_TEST_PAUSE_IN_WRITE"


def _pause_for_test(tmp: Path) -> None:
    """The test hook of the module docstring: announce ``tmp`` in the marker file, wait for its removal."""
    marker = os.environ.get(PAUSE_ENV)
    if not marker:
        return
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(tmp))
    while os.path.exists(marker):
        time.sleep(0.005)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporaries in ``directory`` left by writers that died mid-write (SIGKILL, power loss).

    Temporary names carry the writer's PID (``.NAME.PID.XXXXXXXX.tmp``); one whose process no longer
    exists on this host is removed. Files of live writers and other names are left alone."""
    removed = []
    for tmp in directory.glob(".*.tmp"):
        parts = tmp.name[:-len(".tmp")].rsplit(".", 2)  # ['.NAME', 'PID', 'XXXXXXXX']
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's process) or not a PID we can judge: keep its file
    return True


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
