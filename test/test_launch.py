"""The launch file and the two ways `ros2 launch ssl3d_ros perception.launch.py` finds this package: a
colcon-style install (built as colcon's ament_python task builds it) and `ssl3d-ament-prefix` for pip
installs. Statically always; with the real upstream launch stack (../shared/ros2_launch) the launches
run for real, as subprocesses, inside scripts/netns-run (as `make test` runs the suite).
"""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch_stack import (INPUT_TOPIC, ROS2_LAUNCH, assert_every_output_answers, colcon_style_install, open_harness,
                          pip_route_prefix, require_launch_stack, scan_to_publish, site_packages, stack_pythonpath,
                          wait_until_matched)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "perception.launch.py"
EXPECTED_ARGUMENTS = {"input_topic", "params_file", "checkpoint", "device", "use_sim_time", "managed"}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and ((isinstance(node.func, ast.Name) and node.func.id == name)
             or (isinstance(node.func, ast.Attribute) and node.func.attr == name))
    ]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_launch_file_parses_and_declares_its_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text(encoding="utf-8"), filename=str(LAUNCH_FILE))
    functions = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    declared = {
        call.args[0].value for call in _calls(tree, "DeclareLaunchArgument")
        if call.args and isinstance(call.args[0], ast.Constant)
    }
    assert declared == EXPECTED_ARGUMENTS


def test_launch_file_starts_the_installed_executable_with_the_input_remapped():
    tree = ast.parse(LAUNCH_FILE.read_text(encoding="utf-8"))
    (node_call,) = _calls(tree, "Node")
    assert ast.literal_eval(_keyword(node_call, "package")) == "ssl3d_ros"
    assert ast.literal_eval(_keyword(node_call, "executable")) == "perception_node"
    remappings = _keyword(node_call, "remappings")
    assert isinstance(remappings, ast.List) and len(remappings.elts) == 1
    source, target = remappings.elts[0].elts
    assert ast.literal_eval(source) == "~/input/points"
    assert isinstance(target, ast.Call) and ast.literal_eval(target.args[0]) == "input_topic"
    # The executable the launch file names is one the package installs (into lib/ssl3d_ros under colcon).
    assert '"perception_node = ssl3d_ros.node_entry:main"' in (REPO / "setup.py").read_text()


def test_default_params_file_is_a_valid_node_config():
    from ssl3d_ros.perception import NodeConfig, load_node_config

    doc = yaml.safe_load((REPO / "config" / "perception.yaml").read_text())
    assert "ros__parameters" in doc["/**"]
    assert isinstance(load_node_config(REPO / "config" / "perception.yaml"), NodeConfig)


def test_rviz_config_shows_the_node_outputs():
    doc = yaml.safe_load((REPO / "rviz" / "ssl3d_ros.rviz").read_text())
    topics = {d["Topic"]["Value"]: d["Class"] for d in doc["Visualization Manager"]["Displays"] if "Topic" in d}
    assert topics["/ssl3d_perception/output/segmentation"] == "rviz_default_plugins/PointCloud2"
    assert topics["/ssl3d_perception/output/visualization"] == "rviz_default_plugins/PointCloud2"
    assert topics["/ssl3d_perception/output/occupancy"] == "rviz_default_plugins/Map"


# ------------------------------------------------------------------------ the two install prefixes


@pytest.fixture(scope="module")
def colcon_prefix(tmp_path_factory) -> Path:
    return colcon_style_install(tmp_path_factory.mktemp("colcon"))


@pytest.fixture(scope="module")
def pip_prefix(tmp_path_factory) -> Path:
    return pip_route_prefix(tmp_path_factory.mktemp("pip_route"))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_ament_prefix_lays_what_a_colcon_install_holds(colcon_prefix, pip_prefix):
    marker = Path("share/ament_index/resource_index/packages/ssl3d_ros")
    assert (colcon_prefix / marker).is_file() and (pip_prefix / marker).is_file()
    assert _tree(pip_prefix / "share" / "ssl3d_ros") == _tree(colcon_prefix / "share" / "ssl3d_ros")
    for prefix in (colcon_prefix, pip_prefix):
        node = prefix / "lib" / "ssl3d_ros" / "perception_node"
        assert node.is_file() and os.access(node, os.X_OK)
        assert node.read_text().startswith(f"#!{sys.executable}\n")


def test_ament_prefix_refuses_a_prefix_it_cannot_write(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    done = subprocess.run([sys.executable, "-m", "ssl3d_ros.ament", str(blocker)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"ssl3d-ament-prefix: cannot write the prefix {blocker}")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_colcon_install_finds_its_class_maps_and_recipes(colcon_prefix, tmp_path):
    """Its data files live only in the ament share dir (no source tree beside the module, none under
    sys.prefix): the shared lookup finds them there, for replay's class maps and demo's recipes."""
    probe = ("import ssl3d_ros, sys\n"
             "from ssl3d_ros.labels import available_class_maps, load_class_map\n"
             "from ssl3d_ros.demo import _pretrain_config\n"
             "assert ssl3d_ros.__file__.startswith(sys.argv[1]), ssl3d_ros.__file__\n"
             "print(load_class_map('semantickitti').num_classes, sorted(available_class_maps()))\n"
             "print(_pretrain_config('sonata'))\n")
    env = {**os.environ, "PYTHONPATH": str(site_packages(colcon_prefix)), "AMENT_PREFIX_PATH": str(colcon_prefix)}
    done = subprocess.run([sys.executable, "-c", probe, str(site_packages(colcon_prefix))], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    classes, recipe = done.stdout.splitlines()
    assert classes == "19 ['scannet20', 'semantickitti', 'semantickitti-learning', 'sim-indoor', 'sim-outdoor']"
    assert recipe == str(colcon_prefix / "share/ssl3d_ros/config/pretrain/sonata.yaml")


# ------------------------------------------------------------------------------- real `ros2 launch`


def _launch_env(prefix: Path, *pythonpath: Path) -> dict[str, str]:
    from builders import ros_env  # localhost discovery and this run's domain id, shared with the harness

    env = ros_env()
    env.update(PYTHON=sys.executable, AMENT_PREFIX_PATH=str(prefix), PYTHONPATH=stack_pythonpath(*pythonpath))
    return env


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default action. A shell starts background jobs
    with SIGINT ignored, and an ignored SIGINT stays ignored across exec; Python then installs no
    handler for it, and `ros2 launch` (which only listens for signals that reach Python's wakeup fd)
    never hears the test's SIGINT. Seen: a suite started as a background job (nohup ... &) failed
    both launch tests, `ros2 launch` killed after 60 s with nothing in its log."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ros2_launch(prefix: Path, pythonpath: list[Path], args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    require_launch_stack()
    # its own process group, so that _end_launch can take every process it started down with it
    return subprocess.Popen([str(ROS2_LAUNCH / "ros2"), "launch", "ssl3d_ros", "perception.launch.py", *args],
                            env=_launch_env(prefix, *pythonpath), cwd=cwd, start_new_session=True,
                            preexec_fn=_default_sigint, **popen)


def _end_launch(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGINT to `ros2 launch` (it stops its node), and whatever of its process group is still there
    after ``timeout`` is killed: a node left behind would answer the next tests' scans on their topics."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader when a child lingers
    except ProcessLookupError:
        pass
    proc.wait()


def test_show_args_through_upstream_ros2_launch(pip_prefix, tmp_path):
    done = subprocess.run([str(require_launch_stack() / "ros2"), "launch", "ssl3d_ros", "perception.launch.py",
                           "--show-args"], env=_launch_env(pip_prefix, REPO), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = {line.strip().strip("'").rstrip("':") for line in done.stdout.splitlines() if line.startswith("    '")}
    assert shown == EXPECTED_ARGUMENTS


def test_use_sim_time_is_parsed_strictly(pip_prefix, tmp_path):
    probe = ("import importlib.util, json, sys\n"
             "spec = importlib.util.spec_from_file_location('perception_launch', sys.argv[1])\n"
             "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
             "out = {}\n"
             "for v in sys.argv[2:]:\n"
             "    try: out[v] = module.parse_bool('use_sim_time', v)\n"
             "    except ValueError as exc: out[v] = str(exc)\n"
             "print(json.dumps(out))\n")
    values = ["true", "True", "1", "yes", "on", "ON", "false", "0", "no", "off", "maybe", "", "2"]
    done = subprocess.run([sys.executable, "-c", probe, str(pip_prefix / "share/ssl3d_ros/launch/perception.launch.py"),
                           *values], env=_launch_env(pip_prefix, REPO), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert [parsed[v] for v in values[:10]] == [True] * 6 + [False] * 4
    for bad in ("maybe", "", "2"):
        assert parsed[bad] == (f"launch argument use_sim_time:={bad!r} is not a boolean; "
                               "use true/false (or 1/0, yes/no, on/off)")


@pytest.mark.ros
@pytest.mark.parametrize("args, line", [
    (["use_sim_time:=maybe"], "launch argument use_sim_time:='maybe' is not a boolean"),
    (["params_file:=/nonexistent/perception.yaml"], "launch argument params_file:='/nonexistent/perception.yaml' is not a file"),
    (["checkpoint:=/nonexistent/model.safetensors", "device:=cpu"],
     "perception_node-1 exited with code 2 (it refused to start; its log line above says why)"),
], ids=["use_sim_time", "params_file", "node_refuses_config"])
def test_a_bad_launch_stops_with_one_line_and_a_nonzero_exit(pip_prefix, tmp_path, args, line):
    proc = _ros2_launch(pip_prefix, [REPO], args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        _end_launch(proc, timeout=0)
    assert proc.returncode == 1, output
    assert f"[ERROR] [launch]: Caught exception in launch (see debug for traceback): {line}" in output
    assert "Traceback" not in output
    if "checkpoint" in args[0]:  # the node's own reason, once
        assert "invalid configuration, not starting: /nonexistent/model.safetensors" in output


@pytest.mark.ros
@pytest.mark.slow
def test_ros2_launch_runs_the_node_on_a_real_scan(pip_prefix, request, tmp_path):
    """`ros2 launch ssl3d_ros perception.launch.py` from the pip route's prefix starts the node with the
    packaged checkpoint on CPU; a real scan gets every output with its header; SIGINT ends it with 0.
    (The colcon route, with real colcon and the README's commands: test_colcon.py.)"""
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:  # no real data: a simulated scan instead
        shared = None
    harness = open_harness()
    log_path = tmp_path / "launch.log"
    with open(log_path, "w") as log:
        proc = _ros2_launch(pip_prefix, [REPO], [f"input_topic:={INPUT_TOPIC}", "device:=cpu"], tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_matched(harness, lambda: proc.poll() is None, log_path.read_text)
        assert_every_output_answers(harness, scan_to_publish(shared))
        # The node that answered is this checkout's: its packaged checkpoint is the one loaded.
        packaged = REPO / "ssl3d_ros" / "data" / "default_nano.safetensors"
        assert f"loaded {packaged} on cpu" in log_path.read_text()
    finally:
        harness.close()
        _end_launch(proc)
    assert proc.returncode == 0, log_path.read_text()
