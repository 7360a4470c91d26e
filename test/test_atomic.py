"""ssl3d_ros.atomic: whole-or-nothing writes, and cleanup of what killed writers left behind."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ssl3d_ros.atomic import atomic_write, remove_stale_temporaries


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
