"""The default checkpoint shipped with the package: ``ssl3d_ros/data/default_nano.safetensors``."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..config import ConfigError

PACKAGED_CHECKPOINT = "default_nano.safetensors"  # in ssl3d_ros/data, see docs for the command that made it


def packaged_checkpoint() -> Path:
    """The default checkpoint shipped with the package (package data, also found in the ament share dir)."""
    try:
        candidate = Path(str(resources.files("ssl3d_ros") / "data" / PACKAGED_CHECKPOINT))
        if candidate.is_file():
            return candidate
    except (ModuleNotFoundError, TypeError):
        pass
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("ssl3d_ros")) / "data" / PACKAGED_CHECKPOINT
        if candidate.is_file():
            return candidate
    except Exception:  # no ament index: plain pip install
        pass
    raise ConfigError(
        f"parameter 'checkpoint' is empty and the packaged default checkpoint ssl3d_ros/data/{PACKAGED_CHECKPOINT} "
        "is missing; pass checkpoint:=/path/to/model.safetensors"
    )


__all__ = ["PACKAGED_CHECKPOINT", "packaged_checkpoint"]
