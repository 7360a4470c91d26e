"""The launch file: statically (always) and through launch_ros (when a ROS distribution provides it)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "perception.launch.py"
EXPECTED_ARGUMENTS = {"input_topic", "params_file", "checkpoint", "device", "use_sim_time"}


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
    assert '"perception_node = ssl3d_ros.node:main"' in (REPO / "setup.py").read_text()


def test_default_params_file_is_a_valid_node_config():
    from ssl3d_ros.params import NodeConfig, load_node_config

    doc = yaml.safe_load((REPO / "config" / "perception.yaml").read_text())
    assert "ros__parameters" in doc["/**"]
    assert isinstance(load_node_config(REPO / "config" / "perception.yaml"), NodeConfig)


def test_rviz_config_shows_the_node_outputs():
    doc = yaml.safe_load((REPO / "rviz" / "ssl3d_ros.rviz").read_text())
    topics = {d["Topic"]["Value"]: d["Class"] for d in doc["Visualization Manager"]["Displays"] if "Topic" in d}
    assert topics["/ssl3d_perception/output/segmentation"] == "rviz_default_plugins/PointCloud2"
    assert topics["/ssl3d_perception/output/visualization"] == "rviz_default_plugins/PointCloud2"
    assert topics["/ssl3d_perception/output/occupancy"] == "rviz_default_plugins/Map"


def test_launch_description_through_launch_ros():
    """Runs where a ROS distribution provides launch/launch_ros (skips in a plain venv)."""
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no ROS distribution)")
    import importlib.util

    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
    except Exception as exc:  # ssl3d_ros not installed into the ament index of this distribution
        if "ssl3d_ros" in str(exc):
            pytest.skip(f"ssl3d_ros is not in the ament index: {exc}")
        raise
    arguments = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert arguments == EXPECTED_ARGUMENTS
    context = LaunchContext()
    for action in description.entities:
        if isinstance(action, DeclareLaunchArgument):
            context.launch_configurations[action.name] = action.default_value[0].perform(context)
    context.launch_configurations["checkpoint"] = "/tmp/model.safetensors"
    (opaque,) = [a for a in description.entities if isinstance(a, OpaqueFunction)]
    (node,) = opaque.execute(context)
    assert node.node_package == "ssl3d_ros" and node.node_executable == "perception_node"


def test_launch_starts_the_node(tmp_path):
    """With launch_testing available (a ROS distribution with ssl3d_ros built by colcon): run the launch
    file with a real checkpoint and see the node's diagnostics on /diagnostics."""
    pytest.importorskip("launch_testing", reason="launch_testing is not installed (no ROS distribution)")
    import os
    import threading
    import time

    import rclpy
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    from diagnostic_msgs.msg import DiagnosticArray
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from rclpy.executors import SingleThreadedExecutor

    from builders import make_checkpoint

    try:
        get_package_share_directory("ssl3d_ros")
    except PackageNotFoundError:
        pytest.skip("ssl3d_ros is not installed in the ament index (build it with colcon)")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    checkpoint = make_checkpoint(tmp_path / "nano.safetensors")
    description = LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={"checkpoint": str(checkpoint), "device": "cpu", "input_topic": "/launch_test/points"}.items(),
    )])
    service = LaunchService()
    service.include_launch_description(description)
    launch_thread = threading.Thread(target=service.run, daemon=True)

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("launch_test_listener", context=context)
    seen: list[str] = []
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda msg: seen.extend(s.message for s in msg.status if s.name.startswith("ssl3d_perception")), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    launch_thread.start()
    try:
        deadline = time.monotonic() + 120
        while not seen and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.2)
        assert seen, "no diagnostics from the launched node within 120 s"
        assert "waiting for first scan" in seen[0]
        assert node.count_subscribers("/launch_test/points") >= 1  # the remapping took effect
    finally:
        service.shutdown()
        launch_thread.join(timeout=30)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
