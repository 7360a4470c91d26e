"""The README's colcon route, run as written, and what stops the node a launch started.

The README's "colcon workspace" blocks (marked ``<!-- colcon-NAME: ... -->``) are read from README.md and
run by bash in this repository's folder with HOME in a temporary folder (the workspace is ~/ssl3d_ws),
so the README and these tests cannot drift apart: real colcon (colcon-common-extensions, the test extra)
builds the workspace, colcon-bash's install/setup.bash is sourced, and ``ros2 launch`` from that install
answers a real scan over DDS; ``colcon test`` runs the package's quick tests. Then the signals: SIGTERM,
SIGHUP or SIGKILL to ``ros2 launch`` alone must not leave its ``perception_node`` running.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launch_stack import (ROS2_LAUNCH, assert_every_output_answers, cmdline, descendants, node_pids, pip_route_prefix,
                          process_running, require_launch_stack, scan_to_publish, stack_pythonpath, wait_until_gone,
                          wait_until_matched)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_TOPIC = "/points"  # the README's `input_topic:=/points`
GONE_TIMEOUT_S = 60.0  # bounds a failure only: the node stops within seconds of its launch
SHELL_TIMEOUT_S = 420.0  # bounds a failure only: a colcon build and the quick tests take 1-2 min here


def readme_block(name: str) -> str:
    """The ```bash block right after ``<!-- colcon-NAME: ...-->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- colcon-{name}:[^\n]*-->\n```bash\n(.*?)```", text, re.S)
    assert found, f"README.md has no ```bash block right after a '<!-- colcon-{name}: ...' line"
    return found.group(1)


def require_colcon() -> None:
    """The README's blocks activate the venv at .venv and run its colcon."""
    if not (REPO / ".venv" / "bin" / "colcon").is_file():
        pytest.skip(f"{REPO / '.venv/bin/colcon'} is absent (the test extra installs colcon-common-extensions)")


def require_colcon_route() -> None:
    """What the README's launch needs besides colcon: ../shared/ros2_launch beside the checkout."""
    require_colcon()
    stack = require_launch_stack()
    if stack.resolve() != (REPO.parent / "shared" / "ros2_launch").resolve():
        pytest.skip(f"the README's block uses ../shared/ros2_launch, not {stack} (SSL3D_ROS2_LAUNCH)")


def _default_sigint() -> None:
    """The launch starts with the signals' default actions, whatever this run inherited: see
    test_launch._default_sigint for SIGINT; a suite started under nohup ignores SIGHUP, and an ignored
    signal stays ignored across exec, so the SIGHUP case would test nohup instead of the launch."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def run_blocks(home: Path, log_path: Path, *names: str, between: str = "") -> subprocess.Popen:
    """bash running the README blocks ``names`` in order (``between`` after the first one), in this
    repository's folder, HOME=``home``, with this run's DDS settings (localhost, a private domain)."""
    from builders import ros_env

    blocks = [readme_block(name) for name in names]
    script = "\n".join([blocks[0], between, *blocks[1:]])
    env = {**ros_env(), "HOME": str(home)}
    with open(log_path, "w") as log:
        # its own session: the clean-up takes every process the shell started down with it
        return subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)


def end_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_blocks_to_end(home: Path, *names: str, between: str = "") -> tuple[int, str]:
    """run_blocks to its end (bounded by SHELL_TIMEOUT_S): its exit status and its log."""
    log_path = home / "shell.log"
    shell = run_blocks(home, log_path, *names, between=between)
    try:
        returncode = shell.wait(timeout=SHELL_TIMEOUT_S)
    finally:
        end_session(shell)
    return returncode, log_path.read_text()


def launch_pids(shell_pid: int) -> list[int]:
    """The `ros2 launch` process of the README's shell: bash runs a script's last command in its own
    process (exec), and the `ros2` script execs Python with ros2cli, so it is the shell's process itself
    or below it."""
    processes = {shell_pid: cmdline(shell_pid), **descendants(shell_pid)}
    return [pid for pid, line in processes.items() if "ros2cli.cli" in line and " launch " in line]


@pytest.mark.ros
@pytest.mark.slow
def test_readme_colcon_route_answers_a_real_scan_and_sigterm_to_the_launch_leaves_no_node(tmp_path, request):
    """The README's build and launch blocks as written: real colcon, install/setup.bash, `ros2 launch`
    from the install; a real scan gets every output. Then SIGTERM to `ros2 launch` only (what docker
    stop and systemd send): upstream launch dies at once without stopping its node, which must stop
    anyway (it was started with --exit-with-parent)."""
    require_colcon_route()
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:  # no real data: a simulated scan instead
        shared = None
    from builders import ros_env

    from ssl3d_ros.evaluation.node_harness import Harness

    ros_env()  # this run's domain, before the harness's participant exists
    harness = Harness(README_TOPIC)
    log_path = tmp_path / "shell.log"
    shell = run_blocks(tmp_path, log_path, "build", "launch")
    try:
        wait_until_matched(harness, lambda: shell.poll() is None, log_path.read_text)
        assert_every_output_answers(harness, scan_to_publish(shared))
        workspace = tmp_path / "ssl3d_ws"
        assert (workspace / "install" / "setup.bash").is_file()  # colcon-bash wrote it
        node_executable = workspace / "install" / "ssl3d_ros" / "lib" / "ssl3d_ros" / "perception_node"
        shebang = node_executable.read_text().splitlines()[0].removeprefix("#!")
        assert Path(shebang).parent.resolve() == (REPO / ".venv" / "bin").resolve()  # the venv's Python
        (launch,) = launch_pids(shell.pid)
        (node,) = node_pids(launch)
        os.kill(launch, signal.SIGTERM)
        wait_until_gone([launch], GONE_TIMEOUT_S, "ros2 launch after SIGTERM")
        wait_until_gone([node], GONE_TIMEOUT_S, "perception_node after SIGTERM to its ros2 launch")
        shell.wait(timeout=GONE_TIMEOUT_S)
    finally:
        harness.close()
        end_session(shell)
    # the case: upstream launch has no Python handler for SIGTERM, so the signal killed it
    # (the shell's last command runs in the shell's own process; 143 if bash had not exec'ed it)
    assert shell.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    log = log_path.read_text()
    assert "Traceback" not in log, log[-6000:]


@pytest.mark.slow
def test_readme_colcon_test_runs_the_quick_tests_and_they_pass(tmp_path):
    """The README's build and test blocks: `colcon test --packages-select ssl3d_ros` runs the quick
    tests (no DDS), `colcon test-result --verbose` reports them and exits 0."""
    require_colcon()
    returncode, log = run_blocks_to_end(tmp_path, "build", "test")
    assert returncode == 0, log[-6000:]
    summary = re.search(r"Summary: (\d+) tests, 0 errors, 0 failures, (\d+) skipped", log)
    assert summary and int(summary.group(1)) >= 100, log[-6000:]
    results = (tmp_path / "ssl3d_ws" / "build" / "ssl3d_ros" / "pytest.xml").read_text()
    assert "test_architecture" in results and "test_node" not in results  # the quick tests, not the DDS ones


@pytest.mark.ros
def test_a_colcon_node_under_a_python_without_rclpy_stops_with_one_line(tmp_path):
    """The issue's case: colcon ran under a Python without rclpy and torch, so the executable's first
    line names that Python. Here the README's workspace is built, then that first line is pointed at the
    venv's base Python (no rclpy, no torch): `ros2 launch` ends with the node's one line and the launch's,
    exit status 1, no traceback."""
    require_colcon_route()
    base = Path(getattr(sys, "_base_executable", "") or "")
    probe = subprocess.run([str(base), "-c", "import rclpy"], capture_output=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}) if base.is_file() else None
    if probe is None or probe.returncode == 0:
        pytest.skip(f"this venv's base Python ({base}) is missing or has rclpy: no Python without it to point at")
    retarget = f'sed -i "1s|.*|#!{base}|" install/ssl3d_ros/lib/ssl3d_ros/perception_node'
    returncode, log = run_blocks_to_end(tmp_path, "build", "launch", between=retarget)
    assert returncode == 1, log[-6000:]
    assert f"perception_node: cannot start: No module named 'rclpy' (in {base})." in log, log[-6000:]
    assert ("Caught exception in launch (see debug for traceback): perception_node-1 exited with code 2 "
            "(it refused to start; its log line above says why)") in log, log[-6000:]
    assert "Traceback" not in log, log[-6000:]


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_a_launch_killed_or_hung_up_leaves_no_node(signum, tmp_path, request):
    """`ros2 launch` (pip route) ended by SIGKILL or SIGHUP, which it cannot or does not handle: its node
    gets SIGTERM from the kernel (--exit-with-parent) and stops cleanly, instead of running on as an orphan."""
    require_launch_stack()
    from builders import ros_env

    from ssl3d_ros.evaluation.node_harness import Harness

    prefix = pip_route_prefix(tmp_path)
    env = {**ros_env(), "PYTHON": sys.executable, "AMENT_PREFIX_PATH": str(prefix),
           "PYTHONPATH": stack_pythonpath(REPO)}
    topic = f"/ssl3d_signal_{signum.name.lower()}/points"
    harness = Harness(topic)
    log_path = tmp_path / "launch.log"
    with open(log_path, "w") as log:
        launch = subprocess.Popen([str(ROS2_LAUNCH / "ros2"), "launch", "ssl3d_ros", "perception.launch.py",
                                   f"input_topic:={topic}", "device:=cpu"], env=env, cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_sigint)
    try:
        wait_until_matched(harness, lambda: launch.poll() is None, log_path.read_text)
        (node,) = node_pids(launch.pid)
        launch.send_signal(signum)
        launch.wait(timeout=GONE_TIMEOUT_S)
        assert launch.returncode == -signum  # the signal ended it: upstream launch has no handler for it
        wait_until_gone([node], GONE_TIMEOUT_S, f"perception_node after {signum.name} to its ros2 launch")
    finally:
        harness.close()
        end_session(launch)
    assert not process_running(node)
