"""Guards against hangs that no in-Python timeout can break: the suite's faulthandler backstop (a test
stuck where pytest-timeout's SIGALRM handler never runs ends the run with every thread's stack), and
nodes that die with the process that started them, so none is left running into the next test."""
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
HANG_GUARD_S = 120  # ends this test's own child if the backstop did not; nothing here is timed


def test_a_test_stuck_beyond_pytest_timeout_ends_the_run_with_its_stack(tmp_path):
    """SIGALRM blocked stands for a main thread stuck inside C: pytest-timeout cannot fire, so the
    backstop (the repository's setup.cfg, its timeout shortened here) must dump the stack and exit."""
    (tmp_path / "test_stuck.py").write_text(textwrap.dedent("""
        import signal, time

        def test_stuck_where_no_signal_handler_runs():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(600)

        def test_never_reached():
            pass
    """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", str(REPO / "setup.cfg"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-o", "timeout=1", "-o", "faulthandler_timeout=3", str(tmp_path / "test_stuck.py")],
        capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")})
    assert result.returncode != 0
    assert "Timeout (0:00:03)!" in result.stderr, result.stderr[-2000:]
    assert "test_stuck_where_no_signal_handler_runs" in result.stderr  # the stuck frame is in the dump
    assert "passed" not in result.stdout  # the run ended there: the next test never ran


@pytest.mark.ros
@pytest.mark.skipif(os.environ.get("SSL3D_IN_NETNS") != "1", reason="starts a ROS 2 node: run via scripts/netns-run")
def test_a_node_outlives_no_process_that_started_it(checkpoint, params_file, tmp_path):
    """The replay, a benchmark or a test killed by SIGKILL (or a timeout) must not leave its node
    running: the node would answer the next run's frames on the same topics."""
    pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")
    log_path = tmp_path / "node" / "node.log"
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from ssl3d_ros.evaluation.node_harness import NodeProcess
        node = NodeProcess({str(tmp_path / "node")!r}, None, "/hang_guard/points", params_files=[{str(params_file)!r}],
                           extra_args=["-p", "checkpoint:={checkpoint}"], private_domain=True)
        print(node.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    node_pid = None
    try:
        first_line = starter.stdout.readline()
        assert first_line.strip().isdigit(), f"the starter did not start a node: {first_line!r}"
        node_pid = int(first_line)
        deadline = time.monotonic() + HANG_GUARD_S
        # up and spinning (its signal handlers installed) before its starter dies
        while "listening on" not in (log_path.read_text(errors="replace") if log_path.exists() else ""):
            assert time.monotonic() < deadline and _running(node_pid), "the node did not start"
            time.sleep(0.2)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        while _running(node_pid):
            assert time.monotonic() < deadline, f"the node (pid {node_pid}) still runs after its starter was killed"
            time.sleep(0.2)
    finally:  # a failed run leaves neither process behind
        if starter.poll() is None:
            starter.kill()
        if node_pid is not None and _running(node_pid):
            os.kill(node_pid, signal.SIGKILL)
    assert "Traceback" not in log_path.read_text(errors="replace")


def _running(pid: int) -> bool:
    """Alive and not a zombie awaiting its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
