"""The package's layout holds: no import cycle, few top-level modules, rclpy only in the node, honest faces.

Everything here reads source with ``ast`` (nothing is imported), so it runs in well under a second.

The import graph has one node per module of ``ssl3d_ros`` (``training/`` counted as ``ssl3d_ros.training``,
where it installs). An edge ``a -> b`` means executing ``a`` runs ``b``: ``import x.y.z`` and ``from x.y
import n`` run ``x.y`` (and ``x.y.n`` when ``n`` is a submodule), and each package above them that is
not already being imported around ``a`` (one of ``a``'s own packages). A package's ``__init__`` importing
its submodules therefore counts; so does a submodule importing names from its own package's
``__init__``, the cycle that leaves a half-initialised face. Imports inside functions run later and
form a second graph, reported apart: a cycle among module-level imports fails, one through a
function-level import does not (that is how an import is deferred on purpose).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ssl3d_ros"
TRAINING = REPO / "training"  # installed as ssl3d_ros.training (ssl3d_ros/training is a symlink to it)
ROS_SHELL = "ssl3d_ros.node"
MAX_TOP_LEVEL_MODULES = 12
FACES = ("ssl3d_ros.codec", "ssl3d_ros.checkpoint", "ssl3d_ros.labels", "ssl3d_ros.perception",
         "ssl3d_ros.evaluation.selection")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    runtime: set[str] = field(default_factory=set)  # module-level edges
    deferred: set[str] = field(default_factory=set)  # edges from imports inside functions
    imports: list[tuple[int, str, list[str], bool]] = field(default_factory=list)  # (line, target, names, deferred)


def _module_files() -> dict[str, tuple[Path, bool]]:
    files = {}
    for root, prefix in ((PACKAGE, ("ssl3d_ros",)), (TRAINING, ("ssl3d_ros", "training"))):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if root == PACKAGE and rel.parts[0] == "training":
                continue  # the symlink; training/ is walked from the repository root
            parts = prefix + rel.with_suffix("").parts
            is_package = parts[-1] == "__init__"
            files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(node, deferred) for every import statement; ``if TYPE_CHECKING:`` blocks never run."""
    def walk(node: ast.AST, deferred: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    yield from walk(ast.Module(body=[sub], type_ignores=[]), deferred)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, deferred
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, inner)
    yield from walk(tree, False)


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    if not node.level:
        return node.module or ""
    return f"{package}.{node.module}" if node.module else package


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def build_graph() -> dict[str, Module]:
    modules = {}
    for name, (path, is_package) in _module_files().items():
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    for module in modules.values():
        own = set(_parents(module.name)) | ({module.name} if module.is_package else set())
        for node, deferred in _imports(module.tree):
            edges = module.deferred if deferred else module.runtime
            if isinstance(node, ast.Import):
                targets = [(alias.name, []) for alias in node.names]
            else:
                targets = [(_resolve(module, node), [alias.name for alias in node.names])]
            for target, names in targets:
                if target != "ssl3d_ros" and not target.startswith("ssl3d_ros."):
                    continue
                module.imports.append((node.lineno, target, names, deferred))
                run = [p for p in _parents(target) if p not in own]
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                if target not in own or len(submodules) < len(names) or not names:
                    run.append(target)  # names from a package's __init__ need it to have run
                edges.update(t for t in run + submodules if t in modules and t != module.name)
    return modules


GRAPH = build_graph()


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as [a, b, ..., a], or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt, black) == grey:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == white and (found := visit(nxt)):
                return found
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(edges):
        if colour[start] == white and (found := visit(start)):
            return found
    return None


def _describe(cycle: list[str]) -> str:
    return "\n  " + "\n  -> ".join(cycle)


def test_the_graph_covers_the_package_and_training():
    assert {"ssl3d_ros", "ssl3d_ros.node", "ssl3d_ros.perception.pipeline", "ssl3d_ros.training.loop",
            "ssl3d_ros.training.finetune.loop"} <= set(GRAPH)
    assert "ssl3d_ros.perception.pipeline" in GRAPH["ssl3d_ros.perception"].runtime  # a face's own import
    assert "ssl3d_ros.codec" in GRAPH["ssl3d_ros.perception.pipeline"].runtime  # relative, module level
    assert "ssl3d_ros.perception" in GRAPH["ssl3d_ros.evaluation.replay"].deferred  # inside a function


def test_module_level_imports_have_no_cycle():
    cycle = find_cycle({name: m.runtime for name, m in GRAPH.items()})
    assert cycle is None, f"import cycle among module-level imports:{_describe(cycle)}"


def test_cycles_closed_only_by_deferred_imports_are_listed(capsys):
    """Not a failure: a function-level import may close a loop on purpose. Printed so a review sees them."""
    edges = {name: m.runtime | m.deferred for name, m in GRAPH.items()}
    seen = []
    while (cycle := find_cycle(edges)) is not None:  # each round removes one deferred edge of the cycle
        for a, b in zip(cycle, cycle[1:]):
            if b in GRAPH[a].deferred and b not in GRAPH[a].runtime:
                edges[a] = edges[a] - {b}
                seen.append(cycle)
                break
        else:  # a module-level cycle: test_module_level_imports_have_no_cycle reports it
            break
    with capsys.disabled():
        for cycle in seen:
            print(f"\n[info] cycle through a function-level import:{_describe(cycle)}")


def test_the_cycle_check_finds_a_cycle():
    """The check itself: a package whose submodule imports a name from its own __init__ is a cycle."""
    edges = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p"}, "q": set()}
    assert find_cycle(edges) == ["p", "p.a", "p.b", "p"]
    assert find_cycle({"p": {"p.a"}, "p.a": set()}) is None


def _bound_names(tree: ast.Module) -> tuple[set[str], bool]:
    """Names a module binds at module level, and whether it can give others (``__getattr__``, ``*``)."""
    names, open_ended = set(), False

    def targets(node: ast.AST):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                targets(element)

    def walk(body: list[ast.stmt]):
        nonlocal open_ended
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                open_ended |= node.name == "__getattr__"
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    targets(target)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets(node.target)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    open_ended |= alias.name == "*"
                    names.add(alias.asname or alias.name.split(".")[0])
            for inner in ("body", "orelse", "finalbody"):
                if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) and hasattr(node, inner):
                    walk(getattr(node, inner))
            if isinstance(node, ast.Try):
                for handler in node.handlers:
                    walk(handler.body)

    walk(tree.body)
    return names, open_ended


def _stale_imports(module_name: str, path: Path, tree: ast.Module, is_package: bool) -> list[str]:
    problems = []
    holder = Module(module_name, path, is_package, tree)
    for node, _ in _imports(tree):
        if isinstance(node, ast.Import):
            wanted = [(alias.name, None) for alias in node.names]
        else:
            target = _resolve(holder, node) if node.level else (node.module or "")
            wanted = [(target, alias.name) for alias in node.names]
        for target, name in wanted:
            if target != "ssl3d_ros" and not target.startswith("ssl3d_ros."):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if target not in GRAPH:
                problems.append(f"{where}: no module {target}")
                continue
            if name is None or f"{target}.{name}" in GRAPH:
                continue
            bound, open_ended = _bound_names(GRAPH[target].tree)
            if not open_ended and name not in bound:
                problems.append(f"{where}: {target} has no name {name}")
    return problems


def test_every_ssl3d_ros_import_names_a_module_and_a_name_that_exist():
    """Old module paths and names left behind by a move fail here, even inside functions no test runs."""
    problems = []
    for module in GRAPH.values():
        problems += _stale_imports(module.name, module.path, module.tree, module.is_package)
    others = [p for d in ("test", "benchmarks", "scripts", "launch") for p in sorted((REPO / d).rglob("*.py"))]
    for path in others:
        problems += _stale_imports(f"_outside.{path.stem}", path, ast.parse(path.read_text(encoding="utf-8")), False)
    assert problems == [], "\n".join(problems)


def test_at_most_twelve_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} top-level modules in ssl3d_ros/: {top}"


def _imports_rclpy(tree: ast.Module) -> bool:
    for node, deferred in _imports(tree):
        if deferred:
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if not getattr(node, "level", 0) and any(n == "rclpy" or n.startswith("rclpy.") for n in names):
            return True
    return False


def test_only_the_node_imports_rclpy():
    """At module level; a tool's DDS mode (the replay's node harness) may import rclpy inside a function."""
    assert [name for name, m in GRAPH.items() if _imports_rclpy(m.tree)] == [ROS_SHELL]
    # and nothing imports the node at module level, so every other module imports without rclpy
    importers = sorted(name for name, m in GRAPH.items() if ROS_SHELL in m.runtime)
    assert importers == []


def test_faces_list_the_public_names_of_their_modules_and_nothing_private():
    """Each new subpackage's __init__ imports and lists every name in its modules' __all__, and each
    module's __all__ is exactly what it defines without a leading underscore."""
    for face in FACES:
        package = GRAPH[face]
        face_all = _dunder_all(package.tree)
        assert face_all is not None, f"{face} has no __all__"
        assert not [n for n in face_all if n.startswith("_")], f"{face} re-exports private names"
        expected = []
        for name, module in sorted(GRAPH.items()):
            if name.rpartition(".")[0] != face or module.is_package:
                continue
            module_all = _dunder_all(module.tree)
            defined = sorted(n for n in _defined_names(module.tree) if not n.startswith("_"))
            assert module_all is not None and sorted(module_all) == defined, (
                f"{name}: __all__ should be its public definitions {defined}")
            expected += module_all
        assert sorted(face_all) == sorted(expected), f"{face}.__all__ differs from its modules' names"
        bound, _ = _bound_names(package.tree)
        assert set(face_all) <= bound, f"{face} lists names it does not import"


def _dunder_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def _defined_names(tree: ast.Module) -> set[str]:
    """Module-level definitions (functions, classes, assigned names), not imports."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(element, ast.Name) and element.id != "__all__":
                        names.add(element.id)
    return names
