"""ssl3d_ros.atomic: whole-or-nothing writes, and cleanup of what killed writers left behind."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ssl3d_ros.atomic import PAUSE_ENV, atomic_write, remove_stale_temporaries

from builders import wait_for_pause  # noqa: E402

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / f".state-000010.safetensors.{_dead_pid()}.abcd1234.tmp"
    alive = tmp_path / f".state-000010.safetensors.{os.getppid()}.efgh5678.tmp"  # a live process's
    foreign = tmp_path / ".notes.tmp"  # not one of ours: no PID in the name
    for p in (dead, alive, foreign):
        p.write_bytes(b"partial")
    atomic_write(tmp_path / "state-000011.safetensors", lambda tmp: tmp.write_bytes(b"new"))
    assert not dead.exists() and alive.exists() and foreign.exists()
    assert remove_stale_temporaries(tmp_path) == []


def test_the_test_hook_pauses_a_complete_write_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))
    marker = tmp_path / "paused"
    monkeypatch.setenv(PAUSE_ENV, str(marker))
    writer = threading.Thread(target=atomic_write, args=(target, lambda tmp: tmp.write_bytes(b"new")))
    writer.start()
    tmp = wait_for_pause(marker, writer.is_alive)
    # paused: the temporary is complete, the destination still the old file
    assert tmp.parent == tmp_path and tmp.name.startswith(".model.safetensors.") and tmp.read_bytes() == b"new"
    assert target.read_bytes() == b"old" and writer.is_alive()
    marker.unlink()  # release
    writer.join()
    assert target.read_bytes() == b"new" and not tmp.exists()
