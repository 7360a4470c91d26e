"""The test suite's own rules, checked on its source with ``ast``: test code lives in test/ and never
imports from benchmarks/ or scripts/. Those folders hold command lines; what a test needs from them
belongs in the package (ssl3d_ros.evaluation.overload, ssl3d_ros.evaluation.device_carry) or beside the
tests (test/per_field_codec.py). Running a script as a subprocess is how tests exercise a command line,
and stays allowed.

Caught: ``import``/``from`` of ``benchmarks``/``scripts`` or of a module that exists only there (which
works once either folder is on sys.path); sys.path changes (``insert``/``append``/``extend``, assignment,
``+=``, ``site.addsitedir``) and file loads (``spec_from_file_location``, ``SourceFileLoader``,
``runpy.run_path``/``run_module``, ``import_module``, ``exec``/``compile``) whose arguments mention either
folder, directly or through a variable assigned in the same file (``DEVICE = REPO / "benchmarks"``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DIR = REPO / "test"
FORBIDDEN_DIRS = ("benchmarks", "scripts")

# Calls that load code from a path or a module name, or put a folder on the import path.
LOADERS = {"spec_from_file_location", "SourceFileLoader", "SourcelessFileLoader", "spec_from_loader", "run_path",
           "run_module", "import_module", "__import__", "exec", "compile", "addsitedir", "load_source"}
SYS_PATH_METHODS = {"insert", "append", "extend", "__setitem__"}


def forbidden_module_names() -> set[str]:
    """The folders themselves and every module name that a file or package inside them defines; a name
    also defined in test/ (a helper there shadows the other) is the test's own."""
    names = set(FORBIDDEN_DIRS)
    for folder in FORBIDDEN_DIRS:
        for path in (REPO / folder).rglob("*"):
            if path.suffix == ".py":
                names.add(path.stem)
            elif path.is_dir() and (path / "__init__.py").is_file():
                names.add(path.name)
    own = {p.stem for p in TEST_DIR.rglob("*.py")} | {p.name for p in TEST_DIR.iterdir() if p.is_dir()}
    return names - own


def _mentions_forbidden_dir(text: str) -> bool:
    parts = text.replace("\\", "/").replace(".", "/").split("/")
    return any(part in FORBIDDEN_DIRS for part in parts)


def _is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


class _Checker:
    def __init__(self, source: str, banned_modules: set[str]) -> None:
        self.tree = ast.parse(source)
        self.banned = banned_modules
        # every name assigned anywhere in the file -> the strings and names its values use
        self.assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name) and node.value is not None:
                            self.assigned.setdefault(name.id, []).append(node.value)

    def _strings(self, node: ast.AST, seen: set[str]) -> list[str]:
        """String constants in ``node``, following names to what was assigned to them."""
        out: list[str] = []
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                out.append(sub.value)
            elif isinstance(sub, ast.Name) and sub.id not in seen:
                seen.add(sub.id)
                for value in self.assigned.get(sub.id, []):
                    out += self._strings(value, seen)
        return out

    def _points_at_forbidden(self, nodes: list[ast.AST]) -> bool:
        return any(_mentions_forbidden_dir(s) for node in nodes for s in self._strings(node, set()))

    def problems(self) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in self.banned:
                        found.append((node.lineno, f"import {alias.name}"))
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module and node.module.split(".")[0] in self.banned:
                    found.append((node.lineno, f"from {node.module} import ..."))
            elif isinstance(node, ast.Call):
                name = _call_name(node)
                args = [*node.args, *(k.value for k in node.keywords)]
                on_sys_path = isinstance(node.func, ast.Attribute) and _is_sys_path(node.func.value)
                if (name in LOADERS or (on_sys_path and name in SYS_PATH_METHODS)) and self._points_at_forbidden(args):
                    found.append((node.lineno, f"{name}(...) on benchmarks/ or scripts/"))
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                touches = any(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value))
                              for t in targets)
                if touches and self._points_at_forbidden([node.value]):
                    found.append((node.lineno, "sys.path assignment with benchmarks/ or scripts/"))
        return sorted(found)


def problems_in(source: str, banned_modules: set[str] | None = None) -> list[tuple[int, str]]:
    return _Checker(source, forbidden_module_names() if banned_modules is None else banned_modules).problems()


def test_no_test_file_imports_from_benchmarks_or_scripts():
    banned = forbidden_module_names()
    assert {"benchmarks", "scripts", "bench_node", "run_all"} <= banned  # the folders were found
    files = sorted(TEST_DIR.rglob("*.py"))
    assert len(files) > 40  # the whole suite, test/launch/ included
    report = {str(path.relative_to(REPO)): found for path in files
              if (found := problems_in(path.read_text(encoding="utf-8"), banned))}
    assert report == {}, report


# The checker itself: each way of reaching into the two folders is caught, the allowed uses are not.
CAUGHT = [
    "import benchmarks.overload",
    "from scripts import x",
    "from bench_node import benchmark_checkpoint",
    "import run_all",
    "import importlib.util\nspec = importlib.util.spec_from_file_location('o', REPO / 'benchmarks' / 'overload.py')",
    "import importlib.machinery as m\nloader = m.SourceFileLoader('p', str(REPO / 'scripts' / 'prepare-device-carry'))",
    "DEVICE = REPO / 'benchmarks' / 'device'\nSCRIPT = DEVICE / 'run.py'\nimport runpy\nrunpy.run_path(str(SCRIPT))",
    "import sys\nsys.path.insert(0, str(REPO / 'benchmarks'))",
    "import sys\nsys.path.append('../scripts')",
    "import sys\nsys.path += [str(HERE.parent / 'benchmarks')]",
    "import sys\nsys.path[:0] = ['benchmarks']",
    "import importlib\nimportlib.import_module('benchmarks.bench_node')",
    "exec((REPO / 'scripts' / 'real_data_study.py').read_text())",
]
ALLOWED = [
    "import subprocess, sys\nsubprocess.run([sys.executable, str(REPO / 'scripts' / 'finetune_study.py')])",
    "cmd = [str(REPO / 'scripts' / 'netns-run'), 'python', str(REPO / 'benchmarks' / 'device' / 'run.py')]",
    "import sys\nsys.path.insert(0, str(Path(__file__).resolve().parent))",
    "from ssl3d_ros.evaluation.overload import run_overload\nimport per_field_codec as reference",
    "z.writestr('ros_probe-1.0.data/scripts/probe-tool', '')",
]


@pytest.mark.parametrize("source", CAUGHT)
def test_checker_catches(source):
    assert problems_in(source), source


@pytest.mark.parametrize("source", ALLOWED)
def test_checker_allows(source):
    assert problems_in(source) == []
