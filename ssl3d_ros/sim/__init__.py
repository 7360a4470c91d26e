"""Simulated LiDAR and depth camera over seeded, labelled scenes (Open3D ray casting).

Built-in default data for unit tests, the demo and pretraining smoke runs; not a substitute for
real data in quality claims. Needs the ``sim`` extra (open3d) only when a scene is built.
"""
from .scenes import (
    INDOOR_CLASSES, INDOOR_COLORS, OUTDOOR_CLASSES, OUTDOOR_COLORS, IndoorSceneConfig,
    OutdoorSceneConfig, class_colors, class_names,
)
from .sensors import DepthCamera, DepthFrame, SpinningLidar
from .sequence import (
    SimConfig, SimSource, SimWorld, build_world, default_depth_camera, default_lidar, simulate_depth_sequence,
    simulate_sequence, with_lidar,
)

__all__ = [
    "OUTDOOR_CLASSES", "INDOOR_CLASSES", "OUTDOOR_COLORS", "INDOOR_COLORS", "class_names", "class_colors",
    "OutdoorSceneConfig", "IndoorSceneConfig", "SpinningLidar", "DepthCamera", "DepthFrame",
    "SimConfig", "SimSource", "SimWorld", "build_world", "simulate_sequence", "simulate_depth_sequence",
    "default_lidar", "default_depth_camera", "with_lidar",
]
