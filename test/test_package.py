"""The package installs the same way for pip (plain venv) and for colcon (ament_python)."""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        cwd=out,
    )
    (wheel,) = out.glob("ssl3d_ros-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_installs_ament_index_and_share_files(wheel_names):
    data = "ssl3d_ros-0.1.0.data/data/"
    expected = [
        "share/ament_index/resource_index/packages/ssl3d_ros",
        "share/ssl3d_ros/package.xml",
        "share/ssl3d_ros/launch/perception.launch.py",
        "share/ssl3d_ros/config/perception.yaml",
    ]
    for path in expected:
        assert data + path in wheel_names, f"{path} missing from the wheel"


def test_training_is_namespaced_not_top_level(wheel_names):
    assert "ssl3d_ros/training/__init__.py" in wheel_names
    assert not any(name.startswith("training/") for name in wheel_names)
    top_level = {name.split("/")[0] for name in wheel_names if not name.startswith("ssl3d_ros-0.1.0.")}
    assert top_level == {"ssl3d_ros"}


def test_console_scripts_include_node_executable(wheel_names):
    setup_src = (REPO / "setup.py").read_text()
    for script in ("perception_node", "ssl3d-perception", "ssl3d-pretrain", "ssl3d-probe", "ssl3d-replay"):
        assert f'"{script} = ' in setup_src


def test_colcon_installs_executables_into_lib_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/ssl3d_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/ssl3d_ros"


def test_package_xml_is_format3_ament_python_with_exec_depends():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.attrib["format"] == "3"
    assert root.findtext("name") == "ssl3d_ros"
    assert root.find("export/build_type").text == "ament_python"
    depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "nav_msgs", "launch_ros"} <= depends


def test_core_modules_import_without_rclpy():
    """Functional core: only ssl3d_ros.node may import rclpy."""
    code = (
        "import sys, importlib, pkgutil, ssl3d_ros\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rclpy' or name.startswith('rclpy.'):\n"
        "            raise ImportError('rclpy blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "skip = {'ssl3d_ros.node'}\n"
        "for m in pkgutil.walk_packages(ssl3d_ros.__path__, 'ssl3d_ros.'):\n"
        "    if m.name not in skip:\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_only_node_module_imports_rclpy_at_module_level():
    """The ROS shell is ssl3d_ros/node.py; tools with a DDS mode (replay) import rclpy lazily inside it."""
    offenders = []
    for path in list((REPO / "ssl3d_ros").rglob("*.py")) + list((REPO / "training").rglob("*.py")):
        if path.name == "node.py" and path.parent.name == "ssl3d_ros":
            continue
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "rclpy" or n.startswith("rclpy.") for n in names):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
