"""The package installs the same way for pip (plain venv) and for colcon (ament_python), and
``training/`` is ``ssl3d_ros.training`` in each of the four ways the package runs: from a bare
checkout, an editable install, a wheel and a colcon build. Builds and installs go into tmp_path,
from a copy of the source tree (the checkout gets no build/ or egg-info); never into this venv."""
from __future__ import annotations

import ast
import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from launch_stack import copy_source

REPO = Path(__file__).resolve().parents[1]
# This venv's site-packages as a plain PYTHONPATH entry: the dependencies (torch, numpy) import from it,
# but under ``python -S`` its .pth files - an editable install of whichever checkout - are not read.
DEPENDENCIES = sysconfig.get_paths()["purelib"]
# Run in a child: the .pth files of the folders given are read (an editable install's finder), then
# ssl3d_ros.training.loop is imported; prints where ssl3d_ros and the loop came from.
IMPORT_PROBE = """
import json, site, sys
for folder in sys.argv[1:]:
    site.addsitedir(folder)
import ssl3d_ros, ssl3d_ros.training.loop
print(json.dumps({"ssl3d_ros": ssl3d_ros.__file__, "loop": ssl3d_ros.training.loop.__file__}))
"""


def imported_from(pythonpath: list[Path | str], site_dirs: list[Path] = (), cwd: Path | None = None) -> dict[str, Path]:
    """Where ``ssl3d_ros`` and ``ssl3d_ros.training.loop`` import from in ``python -S`` with
    ``pythonpath`` (then the dependencies) and ``site_dirs``' .pth files: nothing else answers."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [*pythonpath, DEPENDENCIES])))
    done = subprocess.run([sys.executable, "-S", "-c", IMPORT_PROBE, *map(str, site_dirs)], cwd=cwd or REPO.parent,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: Path(path) for name, path in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def source_modules(root: Path) -> set[str]:
    """Every module of ``training/`` under ``root``, as ``ssl3d_ros/training/...py``."""
    return {f"ssl3d_ros/training/{p.relative_to(root / 'training').as_posix()}" for p in (root / "training").rglob("*.py")
            if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from the source tree."""
    work = tmp_path_factory.mktemp("wheel")
    source = copy_source(work / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(source)], check=True, cwd=work, timeout=600)
    (built,) = (work / "dist").glob("ssl3d_ros-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.fixture(scope="module")
def wheel_install(wheel, tmp_path_factory) -> Path:
    """The wheel installed with `pip install --target` (which never touches this venv's own installs)."""
    target = tmp_path_factory.mktemp("wheel_install")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    return target


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


def test_training_is_one_tree_in_the_checkout_and_whole_in_the_wheel(wheel_names):
    """No link or copy of training/ inside ssl3d_ros/ (find_packages would see two trees); the wheel
    holds every module of training/ as ssl3d_ros.training, once."""
    from setuptools import find_packages

    assert not os.path.lexists(REPO / "ssl3d_ros" / "training")
    assert not any(name.startswith("ssl3d_ros.training") for name in find_packages(str(REPO), include=["ssl3d_ros*"]))
    in_wheel = {name for name in wheel_names if name.startswith("ssl3d_ros/training/") and name.endswith(".py")}
    assert in_wheel == source_modules(REPO)


# Run in a child with an install first on PYTHONPATH: each console script of the entry_points.txt on
# stdin resolves to a callable; prints {script: [callable, the file its module came from]}.
ENTRY_POINT_PROBE = """
import configparser, functools, importlib, json, sys
entry_points = configparser.ConfigParser()
entry_points.optionxform = str
entry_points.read_string(sys.stdin.read())
found = {}
for script, target in entry_points["console_scripts"].items():
    module, _, attr = target.strip().partition(":")
    obj = functools.reduce(getattr, attr.split("."), importlib.import_module(module))
    found[script] = [callable(obj), sys.modules[module].__file__]
print(json.dumps(found))
"""


def test_wheel_console_scripts_resolve_to_callables_in_the_installed_wheel(wheel, wheel_install):
    """The built wheel's own entry points (its dist-info/entry_points.txt), not setup.py's text: every
    console script names a callable that imports from the installed wheel (the node executables too)."""
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(name).decode()
    # site-packages are read here (rclpy's libraries come from a .pth); the install is first on the path,
    # and the file each module came from shows that nothing else answered
    env = dict(os.environ, PYTHONPATH=str(wheel_install))
    done = subprocess.run([sys.executable, "-c", ENTRY_POINT_PROBE], input=entry_points, cwd=wheel_install.parent,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"perception_node", "ssl3d-perception", "ssl3d-pretrain", "ssl3d-finetune", "ssl3d-probe",
            "ssl3d-replay"} <= set(found)
    for script, (is_callable, module_file) in found.items():
        assert is_callable, script
        assert Path(module_file).is_relative_to(wheel_install), (script, module_file)


def test_wheel_install_imports_training_from_itself(wheel_install):
    where = imported_from([wheel_install])
    assert where["loop"] == wheel_install / "ssl3d_ros" / "training" / "loop.py"


def test_bare_checkout_imports_training_from_its_own_tree():
    """Nothing installed: the checkout on PYTHONPATH, ``ssl3d_ros.training`` from its ``training/``."""
    where = imported_from([REPO])
    assert where["ssl3d_ros"] == REPO / "ssl3d_ros" / "__init__.py"
    assert where["loop"] == REPO / "training" / "loop.py"


def test_editable_install_imports_training_from_the_source_tree(tmp_path):
    """`pip install -e` of a source tree (into a --target folder): training from that tree; and a
    checkout on PYTHONPATH beside it still gets its own training/, not the editable install's."""
    source = copy_source(tmp_path / "src")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target",
                    str(target), "-e", str(source)], check=True, cwd=tmp_path, capture_output=True, timeout=300)
    # the editable finder module is on the path first: the .pth imports it (this venv holds one of the same name)
    where = imported_from([target], site_dirs=[target], cwd=tmp_path)
    assert where["ssl3d_ros"] == source / "ssl3d_ros" / "__init__.py"
    assert where["loop"] == source / "training" / "loop.py"
    where = imported_from([REPO, target], site_dirs=[target], cwd=tmp_path)
    assert where["loop"] == REPO / "training" / "loop.py"


def colcon() -> str:
    """The colcon executable (SSL3D_COLCON, beside this Python as the test extra installs it, or on
    PATH); the test skips without one."""
    beside = Path(sys.executable).parent / "colcon"
    found = os.environ.get("SSL3D_COLCON") or (str(beside) if beside.is_file() else shutil.which("colcon"))
    if not found:
        pytest.skip("colcon is not installed (colcon-core + colcon-ros; or set SSL3D_COLCON to its executable)")
    return found


def test_colcon_build_installs_training_into_the_package(tmp_path):
    """`colcon build` (ament_python, by colcon-ros) of the source tree: training is a copy inside the
    installed ssl3d_ros and imports from there; the executables are in lib/ssl3d_ros."""
    executable = colcon()
    copy_source(tmp_path / "src" / "ssl3d_ros")
    done = subprocess.run([executable, "--log-base", str(tmp_path / "log"), "build", "--base-paths", "src",
                           "--build-base", "build", "--install-base", "install", "--event-handlers",
                           "console_direct-"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    prefix = tmp_path / "install" / "ssl3d_ros"
    (site,) = prefix.glob("lib/python3*/site-packages")
    assert source_modules(REPO) <= {p.relative_to(site).as_posix() for p in site.rglob("ssl3d_ros/training/**/*.py")}
    assert (prefix / "lib" / "ssl3d_ros" / "perception_node").is_file()
    where = imported_from([site], cwd=tmp_path)
    assert where["loop"] == site / "ssl3d_ros" / "training" / "loop.py"


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
        "import ssl3d_ros.training\n"
        "for m in [*pkgutil.walk_packages(ssl3d_ros.__path__, 'ssl3d_ros.'),\n"
        "          *pkgutil.walk_packages(ssl3d_ros.training.__path__, 'ssl3d_ros.training.')]:\n"
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
