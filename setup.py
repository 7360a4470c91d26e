"""ssl3d_ros: one setup.py for `colcon build` (ament_python) and for `pip install` into a plain venv."""
import os
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "ssl3d_ros"
# The source tree, found through this file's real path: `colcon build --symlink-install` runs setup.py
# from a link in its build folder, where only setup.py, setup.cfg, the top-level package and the data
# files are linked (no README.md, no training/); every other build runs it in the source tree.
SOURCE = Path(__file__).resolve().parent
TRAINING = os.path.relpath(SOURCE / "training")  # "training" in the source tree

# `training/` lives at the repository root (offline tooling, not needed by the node) and is the
# subpackage `ssl3d_ros.training`, by ONE mapping: `package_dir` below. Every installer applies it -
# a wheel (pip install) and colcon's ament_python build copy training/ into ssl3d_ros/training, so no
# bare top-level `training` lands in site-packages - and a source tree, which nothing installs (a bare
# checkout on PYTHONPATH, an editable install), gets the same mapping from ssl3d_ros/__init__.py.
# There is no link or copy of training/ inside ssl3d_ros/, so find_packages sees each module once.
core_packages = find_packages(where=str(SOURCE), include=[PACKAGE, f"{PACKAGE}.*"])
training_packages = [f"{PACKAGE}.training"] + [
    f"{PACKAGE}.training.{sub}" for sub in find_packages(where=str(SOURCE / "training"))
]

ROS_WHEELS = [  # rclpy and messages from PyPI, for venvs without a ROS distribution
    "ros-rclpy",
    "ros-sensor-msgs",
    "ros-std-msgs",
    "ros-diagnostic-msgs",
    "ros-nav-msgs",
    "ros-geometry-msgs",
    "ros-visualization-msgs",
    "ros-rmw-fastrtps-cpp",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Self-supervised sparse 3D encoders: pretraining from scan logs and a ROS 2 perception node",
    long_description=(SOURCE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=core_packages + training_packages,
    package_dir={f"{PACKAGE}.training": TRAINING},
    package_data={PACKAGE: ["data/*.json", "data/*.safetensors", "data/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/classes", glob("config/classes/*.yaml")),
        (f"share/{PACKAGE}/config/pretrain", glob("config/pretrain/*.yaml")),
        (f"share/{PACKAGE}/config/finetune", glob("config/finetune/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=[
        "numpy>=1.24",
        "pyyaml>=6",
        "safetensors>=0.4",
        "rosbags>=0.10",
        "torch>=2.2",  # pinned to 2.13.0 by constraints.txt in `make`
        "tqdm",
        "matplotlib>=3.7",
        "scipy>=1.10",
    ],
    extras_require={
        "ros": ROS_WHEELS,
        "spconv": ["spconv>=2.3"],  # CPU wheel: forward-only sparse convs on CPU
        "cuda": [  # CUDA wheels; install instead of the `spconv` extra
            "spconv-cu120>=2.3; python_version<'3.12'",
            "spconv-cu126>=2.3.8; python_version>='3.12'",
        ],
        "sim": ["open3d>=0.18"],
        "train": ["tensorboard"],
        "test": ["pytest>=9", "pytest-timeout", "hypothesis>=6", "pytest-random-order>=1.2", "pytest-xdist>=3.6",
                 "colcon-common-extensions"],  # real colcon for the colcon build test (test_package)
    },
    zip_safe=False,
    entry_points={
        "console_scripts": [
            # `perception_node` is what the launch file starts from lib/ssl3d_ros under colcon.
            "perception_node = ssl3d_ros.node_entry:main",
            "ssl3d-perception = ssl3d_ros.node_entry:main",
            "ssl3d-pretrain = ssl3d_ros.training.pretrain:main",
            "ssl3d-finetune = ssl3d_ros.training.finetune:main",
            "ssl3d-novelty-ref = ssl3d_ros.training.novelty:main",
            "ssl3d-study = ssl3d_ros.training.study:main",
            "ssl3d-probe = ssl3d_ros.evaluation.probe:main",
            "ssl3d-replay = ssl3d_ros.evaluation.replay:main",
            "ssl3d-viz = ssl3d_ros.evaluation.viz:main",
            "ssl3d-audit = ssl3d_ros.evaluation.audit:main",
            "ssl3d-select = ssl3d_ros.evaluation.selection:main",
            "ssl3d-simulate = ssl3d_ros.sim.cli:main",
            "ssl3d-demo = ssl3d_ros.demo:main",
            # pip users: lay a colcon-style prefix so `ros2 launch ssl3d_ros ...` finds the package.
            "ssl3d-ament-prefix = ssl3d_ros.ament:main",
        ],
    },
)
