"""The real upstream launch stack (../shared/ros2_launch: launch, launch_ros, launch_testing, ros2cli,
sensor_msgs_py) and the two install prefixes `ros2 launch` can find this package in.

launch_testing 3.7.1's pytest plugin does not load under pytest 9, so nothing here puts the stack on
pytest's own sys.path at start-up: launches run as subprocesses (`ros2 launch`, `launch_test`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROS2_LAUNCH = Path(os.environ.get("SSL3D_ROS2_LAUNCH", REPO.parent / "shared" / "ros2_launch"))
# What a colcon ament_python build copies out of the source tree (setup.py's packages and data files).
SOURCE_ENTRIES = ("setup.py", "setup.cfg", "README.md", "package.xml", "resource", "launch", "config", "rviz",
                  "ssl3d_ros", "training")


def require_launch_stack() -> Path:
    if not (ROS2_LAUNCH / "ros2").is_file() or not (ROS2_LAUNCH / "site" / "launch").is_dir():
        pytest.skip(f"the upstream launch stack {ROS2_LAUNCH} is absent (see its README; set SSL3D_ROS2_LAUNCH)")
    return ROS2_LAUNCH


def stack_pythonpath(*first: Path | str) -> str:
    return os.pathsep.join([*map(str, first), str(ROS2_LAUNCH / "site"), str(ROS2_LAUNCH / "stubs")])


def site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def copy_source(dest: Path) -> Path:
    """The package's source tree (SOURCE_ENTRIES, no caches or build outputs) copied to ``dest``."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for entry in SOURCE_ENTRIES:
        path = REPO / entry
        if path.is_dir():
            shutil.copytree(path, dest / entry, ignore=ignore)
        else:
            shutil.copy2(path, dest / entry)
    return dest


def colcon_style_install(work: Path) -> Path:
    """Build and install this package the way colcon's ament_python task does (``setup.py egg_info
    build install --prefix ... --single-version-externally-managed``, scripts into lib/ssl3d_ros by
    setup.cfg), from a copy of the source tree so the checkout gets no build/ or egg-info. Returns the
    install prefix. Never pip: the venv's pip would uninstall its editable install."""
    source, build, prefix = copy_source(work / "src" / "ssl3d_ros"), work / "build", work / "install"
    build.mkdir()
    command = [sys.executable, "setup.py", "egg_info", "--egg-base", str(build),
               "build", "--build-base", str(build / "build"),
               "install", "--prefix", str(prefix), "--install-lib", str(site_packages(prefix)),
               "--record", str(build / "install.log"), "--single-version-externally-managed"]
    done = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return prefix


def pip_route_prefix(work: Path) -> Path:
    """`ssl3d-ament-prefix PREFIX` (the documented pip route) for this checkout's install."""
    prefix = work / "ament_prefix"
    done = subprocess.run([sys.executable, "-m", "ssl3d_ros.ament", str(prefix)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"export AMENT_PREFIX_PATH={prefix}" in done.stdout
    return prefix


# ------------------------------------------------------------------ a launched node answers one scan

INPUT_TOPIC = "/ssl3d_test/points"  # the topic test_node.Harness publishes on
STAGE_TIME = "/ssl3d_perception/debug/stage_time_ms"
OUSTER_BAG = ("bags/ouster_real_pointcloud2_mcap", "/ouster/os_1_32_g_v2_1_1_1024x10/points")


def scan_to_publish(shared_data: Path | None):
    """The first recorded PointCloud2 of the real Ouster bag, as its driver sent it, restamped now;
    a simulated scan when ../shared/data is absent."""
    import time

    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2, PointField

    from ssl3d_ros.codec import encode_cloud, fill_cloud_message

    if shared_data is None or not (shared_data / OUSTER_BAG[0]).is_dir():
        from builders import sim_scan

        scan = sim_scan(seed=5)
        msg = fill_cloud_message(PointCloud2(), encode_cloud(scan.points, {"intensity": scan.fields["intensity"]}),
                                 PointField)
        msg.header.frame_id = scan.frame_id
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
        return msg

    from ssl3d_ros.io.rosbag import BagSource

    bag = BagSource(shared_data / OUSTER_BAG[0], topics=[OUSTER_BAG[1]])
    msg = deserialize_message(bag.raw_message(0), PointCloud2)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    return msg


def open_harness():
    """The library harness (ssl3d_ros.evaluation.node_harness) on INPUT_TOPIC: every output, debug topic
    and /diagnostics."""
    from ssl3d_ros.evaluation.node_harness import Harness

    return Harness(INPUT_TOPIC)


def wait_until_matched(harness, alive, log_text, timeout: float = 180.0) -> None:
    """Until the launched node subscribes to the input, has matched every output subscription on its own
    side too (its diagnostics say so) and publishes; ``alive()`` False (the launch ended) fails at once
    with the launch's log."""
    def ready():
        if not alive():
            raise AssertionError(f"the launch ended before the node was ready; its log:\n{log_text()}")
        return harness.node_ready()
    try:
        harness.wait(ready, timeout, "the launched node to match every topic")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; the launch's log:\n{log_text()}") from None


def assert_every_output_answers(harness, msg, timeout: float = 180.0) -> dict:
    """Publish ``msg`` and check that every output arrives: the stamped ones with its header, the
    timing topics, and /diagnostics counting the processed frame. Returns the stamped outputs."""
    stamped = [harness.topic(f"output/{o}") for o in ("segmentation", "embeddings", "visualization", "occupancy")]
    timing_topics = [harness.topic(f"debug/{t}") for t in ("processing_time_ms", "pipeline_latency_ms", "stage_time_ms")]
    with harness.cond:
        before = {t: len(harness.arrivals[t]) for t in timing_topics}
    harness.publish(msg, reliable=True)
    outputs = {t: a.msg for t, a in harness.outputs_for(msg.header, stamped, timeout).items()}
    assert set(outputs) == set(stamped)
    for topic, out in outputs.items():
        assert out.header.frame_id == msg.header.frame_id, topic
        assert (out.header.stamp.sec, out.header.stamp.nanosec) == (msg.header.stamp.sec, msg.header.stamp.nanosec)
    assert outputs[stamped[0]].width * outputs[stamped[0]].height == msg.width * msg.height  # one label per point
    for topic in timing_topics:
        harness.wait(lambda: len(harness.arrivals[topic]) > before[topic], 30, topic)
    harness.latest_diagnostics(lambda v: int(v["frames_processed"]) >= 1 and v["frames_errors"] == "0", 30,
                               "diagnostics counting the scan as processed")
    return outputs


def upstream_point_cloud2():
    """sensor_msgs_py.point_cloud2 from the launch stack's site/ (it needs rclpy's sensor_msgs); only that
    package is imported, so nothing else of the stack lands in this process."""
    package = ROS2_LAUNCH / "site" / "sensor_msgs_py"
    if not (package / "point_cloud2.py").is_file():
        pytest.skip(f"upstream sensor_msgs_py is absent from {package.parent} (see ../shared/ros2_launch/README.md)")
    sys.path.insert(0, str(package.parent))
    try:
        from sensor_msgs_py import point_cloud2
    finally:
        sys.path.remove(str(package.parent))
    return point_cloud2


# ------------------------------------------------------------------ the processes a launch leaves


def process_running(pid: int) -> bool:
    """Alive and not a zombie awaiting its reaper (an orphan's reaper may be slow, or never come)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def descendants(pid: int) -> dict[int, str]:
    """Every living process below ``pid`` (children, their children, ...): pid -> command line."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue  # gone while listing
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except (FileNotFoundError, ProcessLookupError):
                    continue
                frontier.append(child)
    return found


def node_pids(launch_pid: int) -> list[int]:
    """The perception_node processes started below ``launch_pid``."""
    return [pid for pid, cmdline in descendants(launch_pid).items() if "perception_node" in cmdline]


def wait_until_gone(pids, timeout: float, what: str) -> None:
    """Until none of ``pids`` runs; fails after ``timeout`` (a bound on a failure, not a timing)."""
    import time

    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if process_running(pid)]):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still running after {timeout:.0f} s: "
                                 + ", ".join(f"{pid} ({cmdline(pid)})" for pid in left))
        time.sleep(0.2)


def cmdline(pid: int) -> str:
    """The command line of ``pid`` (arguments joined by spaces), "gone" when it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
