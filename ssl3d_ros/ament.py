"""``ssl3d-ament-prefix PREFIX``: make a pip-installed ssl3d_ros visible to ``ros2 launch``.

``ros2 launch ssl3d_ros perception.launch.py`` finds a package only through the ament index on
``AMENT_PREFIX_PATH``; pip registers nothing there (an editable install has no ``share/`` at all, a
wheel has ``share/`` but no ``lib/ssl3d_ros/perception_node``). This lays the same colcon-style prefix
that ``colcon build`` (ament_python) installs, for the package already importable by this interpreter:

    PREFIX/share/ament_index/resource_index/packages/ssl3d_ros   (the index marker)
    PREFIX/share/ssl3d_ros/{package.xml, launch/, config/, rviz/}
    PREFIX/lib/ssl3d_ros/perception_node                          (runs the node with this Python)

The Python code is not copied: the wrapper imports ``ssl3d_ros`` from this interpreter's install, so
an editable install stays editable (re-run after editing launch/ or config/ files, which are copied).

    ssl3d-ament-prefix ~/.local/share/ssl3d_ament
    export AMENT_PREFIX_PATH=~/.local/share/ssl3d_ament${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

from .locations import PACKAGE, SOURCE_ROOT

# The files under share/ssl3d_ros, as setup.py's data_files install them (test_launch.py checks that
# a setup.py-built prefix and this one hold the same files).
SHARE_GLOBS = ("package.xml", "launch/*.launch.py", "config/*.yaml", "config/*.xml", "config/classes/*.yaml",
               "config/pretrain/*.yaml", "config/finetune/*.yaml", "rviz/*.rviz")
EXECUTABLES = {"perception_node": "ssl3d_ros.node_entry"}
INDEX_MARKER = Path("share") / "ament_index" / "resource_index" / "packages" / PACKAGE


class PrefixError(Exception):
    """The prefix cannot be laid out (one line for the user)."""


def data_source() -> Path:
    """The folder holding package.xml, launch/ and config/: the source checkout, else the data files a
    wheel installed under sys.prefix."""
    for root in (SOURCE_ROOT, Path(sys.prefix) / "share" / PACKAGE):
        if (root / "package.xml").is_file() and (root / "launch").is_dir():
            return root
    raise PrefixError(f"the package's data files are not installed: no package.xml and launch/ in {SOURCE_ROOT} "
                      f"or {Path(sys.prefix) / 'share' / PACKAGE} (reinstall ssl3d_ros with pip)")


def share_files(source: Path) -> list[Path]:
    """The data files under ``source`` that belong in share/ssl3d_ros, relative to it."""
    return sorted({p.relative_to(source) for pattern in SHARE_GLOBS for p in source.glob(pattern) if p.is_file()})


def wrapper_script(module: str, python: str) -> str:
    return (f"#!{python}\n"
            f"# Written by ssl3d-ament-prefix: the {PACKAGE} node for the Python it was installed into.\n"
            f"import sys\n\nfrom {module} import main\n\nsys.exit(main())\n")


def install_prefix(prefix: Path, python: str = sys.executable) -> list[Path]:
    """Lay the colcon-style prefix under ``prefix``; returns the files written."""
    prefix = prefix.expanduser().absolute()
    source = data_source()
    if prefix == source or source.is_relative_to(prefix / "share"):
        raise PrefixError(f"{prefix} is where the package's data files come from; choose another prefix")
    written: list[Path] = []
    try:
        marker = prefix / INDEX_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        written.append(marker)
        share = prefix / "share" / PACKAGE
        for rel in share_files(source):
            target = share / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target)
            written.append(target)
        lib = prefix / "lib" / PACKAGE
        lib.mkdir(parents=True, exist_ok=True)
        for name, module in EXECUTABLES.items():
            target = lib / name
            target.write_text(wrapper_script(module, python))
            target.chmod(0o755)
            written.append(target)
    except OSError as exc:
        raise PrefixError(f"cannot write the prefix {prefix}: {exc.strerror or exc} ({exc.filename or prefix})") from None
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl3d-ament-prefix",
        description="Make this pip install of ssl3d_ros visible to `ros2 launch`: lay a colcon-style prefix "
                    "(ament index marker, share/ssl3d_ros, lib/ssl3d_ros/perception_node) and print the "
                    "AMENT_PREFIX_PATH to export.",
    )
    parser.add_argument("prefix", type=Path, help="folder to create or update (e.g. ~/.local/share/ssl3d_ament)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = install_prefix(args.prefix)
    except PrefixError as exc:
        print(f"ssl3d-ament-prefix: {exc}", file=sys.stderr)
        return 2
    prefix = args.prefix.expanduser().absolute()
    print(f"wrote {len(written)} files under {prefix} (node executables run {sys.executable})")
    print("to use it with `ros2 launch ssl3d_ros perception.launch.py`, run:")
    print(f"export AMENT_PREFIX_PATH={prefix}${{AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
