"""Wheels as one installed tree, for the folder that travels to the GPU machine (``make device-carry``).

``scripts/prepare-device-carry`` downloads cp312 wheels (spconv, the ROS 2 wheels) and packs what
:func:`unpack` makes of them; :func:`requirements` is how it follows their ``Requires-Dist``. The
functions are here, not in the script, so the tests exercise them without loading a script by path.
"""
from __future__ import annotations

import email.parser
import re
import shutil
import zipfile
from pathlib import Path

#: the GPU machine's Python
PYTHON_VERSION = "3.12"
#: folders of the installation prefix nothing loads at run time (C++ headers, CMake files, Fast DDS's
#: command-line tools) and static libraries
DROP_DIRS = ("include", "cmake", "bin", "lib64")
DROP_SUFFIXES = (".a",)
#: the environment Requires-Dist markers are evaluated in (the GPU machine's Python)
MARKER_ENV = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(wheel: Path) -> list[str]:
    """Requirement names of a wheel: Requires-Dist whose marker holds on the GPU machine, no extras."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
    names = []
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(MARKER_ENV):
            names.append(canonical(req.name))
    return names


def unpack(wheels: list[Path], site: Path) -> None:
    """The wheels' trees as an installation into the prefix ``site`` whose site-packages is ``site``
    itself (as in a venv, where both coincide): package folders and the ``*.data`` parts (``lib/*.so``,
    ``share/``, and ``lib/python3.12/site-packages`` merged into the top). Byte-identical files (a
    library and its versioned names: wheels hold no symbolic links) become links to one copy."""
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    own_site = ["lib", f"python{PYTHON_VERSION}", "site-packages"]
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if parts[0].endswith(".data") and len(parts) > 2:
                    kind, rest = parts[1], parts[2:]  # purelib / platlib / data / scripts / headers
                    if kind in ("scripts", "headers"):
                        continue
                    if rest[:3] == own_site:
                        rest = rest[3:]
                    parts = rest
                if info.is_dir() or not parts or parts[0] in DROP_DIRS or parts[-1].endswith(DROP_SUFFIXES):
                    continue
                target = site.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    target.chmod(mode)
    link_duplicates(site / "lib")


def link_duplicates(folder: Path) -> None:
    import hashlib

    first: dict[tuple[int, str], Path] = {}
    for path in sorted(folder.glob("*.so*"), key=lambda p: (len(p.name), p.name)):
        if path.is_symlink() or not path.is_file():
            continue
        key = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        if key in first:
            path.unlink()
            path.symlink_to(first[key].name)
        else:
            first[key] = path
