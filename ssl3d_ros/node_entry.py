"""The entry point of the node executables (``perception_node``, ``ssl3d-perception``): what has to happen
before rclpy and torch load, so that the node's process starts, stops and fails as a user or a launch expects.

- **Which Python.** An executable installed by colcon (``lib/ssl3d_ros/perception_node``) runs the Python
  that colcon ran under: colcon writes that interpreter into its first line. When rclpy, a message package
  or torch cannot be imported there, the node says so in one line naming that interpreter and exits 2,
  instead of a traceback.
- **Stopping.** SIGINT and SIGTERM (Ctrl-C, ``docker stop``, systemd, a launch's shutdown) stop the node
  cleanly at any moment, exit status 0. Once rclpy is initialised, its own handlers shut its context down
  and the node's shell stops its threads and destroys the node; before that (the imports take seconds)
  the signals are recorded here, and the node stops as soon as rclpy is up, before loading the model.
- **Never outliving its launch.** With ``--exit-with-parent`` (the launch file passes it) Linux sends the
  node SIGTERM when the process that started it exits, however it ended: upstream ``ros2 launch`` has no
  Python handler for SIGTERM or SIGHUP, so either kills it at once, like SIGKILL, without it stopping the
  processes it started; the node would run on, reparented to PID 1. Not the default: a node started by hand from a shell that then exits (``nohup``)
  is meant to keep running.

This module imports neither rclpy nor torch; :mod:`ssl3d_ros.node` is imported only once the signals are set.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Sequence

EXIT_WITH_PARENT = "--exit-with-parent"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_MISSING_DEPENDENCY = 2  # the console scripts' "bad input or configuration" status: the install is wrong


class StopSignals:
    """SIGINT and SIGTERM until rclpy's handlers take over: recorded, never raised, so that no half-done
    import or start-up step is interrupted; :func:`ssl3d_ros.node.main` stops once rclpy is up. Later,
    rclpy's handlers call these too (they chain to the handlers they replace), which changes nothing."""

    def __init__(self) -> None:
        self._received = threading.Event()

    def install(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)
        return self

    def _record(self, signum: int, frame: object) -> None:
        self._received.set()

    def received(self) -> bool:
        return self._received.is_set()


def exit_with_parent(parent_pid: int) -> bool:
    """Ask Linux to send this process SIGTERM when its parent exits. False when the parent is already
    gone (this process was reparented before the request took hold); True elsewhere than on Linux, where
    there is no such request and the launch's own shutdown is all there is."""
    if not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    # unsigned long arguments, as the kernel reads them: a plain int leaves a register's upper half unset
    args = [ctypes.c_ulong(v) for v in (int(signal.SIGTERM), 0, 0, 0)]
    if libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), *args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    return os.getppid() == parent_pid


def missing_dependency(prog: str, exc: ImportError) -> str:
    """The one line for a node dependency this Python cannot import."""
    return (f"{prog}: cannot start: {exc} (in {sys.executable}). The node needs rclpy, the ROS 2 message "
            "packages and torch in the Python that runs it; an executable built by colcon runs the Python colcon "
            "ran under (its first line names it): activate the environment that holds them (e.g. "
            "`source .venv/bin/activate`) before `colcon build`, then build again")


def user_arguments(argv: Sequence[str]) -> list[str]:
    """The node's own arguments: those before ``--ros-args``."""
    argv = list(argv)
    return argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]


def main(argv: Sequence[str] | None = None) -> int:
    parent = os.getppid()
    argv = list(sys.argv if argv is None else argv)
    stop = StopSignals().install()
    if EXIT_WITH_PARENT in user_arguments(argv) and not exit_with_parent(parent):
        return 0  # what started the node has already exited: nothing to run for
    try:
        from .node import main as node_main
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] == "ssl3d_ros":
            raise  # this package's own import failed: a bug, with its traceback
        print(missing_dependency(os.path.basename(argv[0]) or "perception_node", exc), file=sys.stderr, flush=True)
        return EXIT_MISSING_DEPENDENCY
    return node_main(argv, stop_requested=stop.received)


__all__ = ["EXIT_WITH_PARENT", "STOP_SIGNALS", "EXIT_MISSING_DEPENDENCY", "StopSignals", "exit_with_parent",
           "missing_dependency", "user_arguments", "main"]

if __name__ == "__main__":
    sys.exit(main())
