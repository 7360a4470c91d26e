"""Where the package's data files (package.xml, config/, launch/, rviz/) are, however it was installed.

Three layouts exist: a source checkout (an editable pip install, or running from the tree) keeps them
beside the ``ssl3d_ros`` package; ``colcon build`` and ``ssl3d-ament-prefix`` put them in the ament
share directory ``PREFIX/share/ssl3d_ros`` found through ``AMENT_PREFIX_PATH``; a wheel installs them
as data files under ``sys.prefix/share/ssl3d_ros``. Every lookup of a named data file goes through
:func:`share_dirs`, so replay, demo and the class maps find the same files, and a miss names every
place that was searched.
"""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "ssl3d_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def ament_share_dir() -> tuple[Path | None, str]:
    """The ament index's share directory of this package, or None and why it is not there."""
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None, "ament index: ament_index_python is not installed"
    try:
        return Path(get_package_share_directory(PACKAGE)), ""
    except Exception as exc:  # PackageNotFoundError, or AMENT_PREFIX_PATH unset (an EnvironmentError)
        return None, f"ament index: {exc}"


def share_dirs() -> tuple[list[Path], list[str]]:
    """Candidate roots holding ``config/``, ``launch/``, ... in the order they are searched (a source
    checkout first: its files are the ones being edited), and notes on the roots that do not exist."""
    roots: list[Path] = []
    notes: list[str] = []
    if (SOURCE_ROOT / "package.xml").is_file():
        roots.append(SOURCE_ROOT)
    ament, why = ament_share_dir()
    if ament is not None:
        roots.append(ament)
    else:
        notes.append(why)
    roots.append(Path(sys.prefix) / "share" / PACKAGE)
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique, notes


def data_dirs(subdir: str) -> list[Path]:
    """``subdir`` (e.g. ``config/classes``) under every candidate root, existing or not."""
    return [root / subdir for root in share_dirs()[0]]


def searched(subdir: str) -> str:
    """The places a lookup under ``subdir`` searched, for an error message."""
    roots, notes = share_dirs()
    return "; ".join([str(root / subdir) for root in roots] + notes)


__all__ = ["PACKAGE", "SOURCE_ROOT", "ament_share_dir", "share_dirs", "data_dirs", "searched"]
