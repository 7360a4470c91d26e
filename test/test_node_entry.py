"""The node executables' entry point (ssl3d_ros.node_entry): SIGTERM stops the node cleanly whenever it
comes, and an import that fails is told apart: a dependency missing from this Python is one line and
exit 2 (test_colcon.py runs the real case, a colcon executable under a Python without rclpy), an
import error of this package is a bug with its traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 120.0  # bounds a failure only: the node stops within seconds
START_TIMEOUT_S = 240.0  # bounds a failure only


def _signal_caught(pid: int, signum: int) -> bool:
    """``pid`` has a handler installed for ``signum`` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the node exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.05)


@pytest.mark.ros
@pytest.mark.skipif(os.environ.get("SSL3D_IN_NETNS") != "1", reason="starts a ROS 2 node: run via scripts/netns-run")
@pytest.mark.parametrize("when", ["while_importing", "running"])
def test_sigterm_stops_the_node_cleanly_with_exit_0(when, tmp_path):
    """SIGTERM (docker stop, systemd, --exit-with-parent) at two moments: as soon as the entry point's
    handlers are in place, seconds before rclpy is up (the node must stop once it is, without loading
    the model), and once the node listens (rclpy's handler shuts it down). Exit 0, no traceback."""
    pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")
    from builders import ros_env

    log_path = tmp_path / "node.log"
    env = {**ros_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ssl3d_ros.node_entry", "--ros-args", "-p", "device:=cpu",
                                 "-r", "~/input/points:=/ssl3d_entry_test/points"], env=env, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        if when == "while_importing":
            _wait_for(lambda: _signal_caught(proc.pid, signal.SIGTERM), proc, "SIGTERM handler")
        else:
            _wait_for(lambda: "listening on" in log_path.read_text(), proc, "'listening on' in its log")
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert returncode == 0, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    if when == "while_importing":
        assert "loaded " not in log  # stopped before the model was loaded


# Run in a child: an import of ``blocked`` fails the way the argument says, then the entry point runs.
BLOCKED_IMPORT = textwrap.dedent("""
    import sys
    blocked = sys.argv[1]
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    from ssl3d_ros.node_entry import main
    sys.exit(main(["perception_node", "--ros-args"]))
""")


@pytest.mark.parametrize("blocked, returncode", [("rclpy", 2), ("ssl3d_ros.perception", 1)],
                         ids=["dependency", "this_package"])
def test_an_import_error_is_one_line_for_a_dependency_and_a_traceback_for_a_bug(blocked, returncode, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, blocked], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == returncode, done.stderr[-3000:]
    if returncode == 2:
        assert done.stderr == (f"perception_node: cannot start: No module named 'rclpy' (in {sys.executable}). "
                               "The node needs rclpy, the ROS 2 message packages and torch in the Python that "
                               "runs it; an executable built by colcon runs the Python colcon ran under (its "
                               "first line names it): activate the environment that holds them (e.g. "
                               "`source .venv/bin/activate`) before `colcon build`, then build again\n")
    else:
        assert "Traceback" in done.stderr and "No module named 'ssl3d_ros.perception'" in done.stderr
