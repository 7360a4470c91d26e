"""ssl3d_ros: self-supervised sparse 3D encoders for ROS 2.

Everything in this package except :mod:`ssl3d_ros.node` imports without rclpy.
"""
from __future__ import annotations

__version__ = "0.1.0"


def _map_training_folder() -> None:
    """``ssl3d_ros.training`` is the repository's top-level ``training/`` folder, by one mapping:
    setup.py's ``package_dir={"ssl3d_ros.training": "training"}``. Installers apply it (a wheel and
    colcon's ament_python build copy the folder to ``ssl3d_ros/training``); a source tree has no
    installer, so this applies the same mapping there, for a bare checkout on PYTHONPATH and an
    editable install alike: with no ``training/`` inside this package and the tree's ``setup.py``
    and ``training/`` beside it, the subpackage is loaded from that folder - the same tree this
    ``ssl3d_ros`` came from, even when a venv's editable install points at another checkout. No link
    or copy in the tree, so ``find_packages`` and grep see one ``training/``."""
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    folder = here.parent / "training"
    if (here / "training").exists() or not ((here.parent / "setup.py").is_file() and (folder / "__init__.py").is_file()):
        return  # an install (the copy is in this package), or no source tree around it
    name = f"{__name__}.training"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    globals()["training"] = module


_map_training_folder()
del _map_training_folder
