"""The import graph of ``pipeline/``: every package imports only from the floors below it,
and no modules import each other round in a circle (function-local imports included: they
were how cycles were dodged). ``tests/unit/test_models.py`` keeps ``models/`` free of Ray,
Horovod and MLflow in the same spirit."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

#: Floors, lowest first. A package imports from its own floor's earlier packages and from
#: lower floors; the packages of the top floor are peers and import none of each other.
FLOORS: list[list[str]] = [
    [
        "redact",
        "errors",
        "config",
        "storage",
        "secret_files",
        "progress",
        "peak_memory",
        "mxnet_import",
        "process_env",
    ],
    ["data"],
    ["model"],
    ["distributed"],
    ["tracking"],
    ["train"],
    ["preflight", "launch"],
    ["compress", "predict", "tune"],
]
TOP = set(FLOORS[-1])


def _modules() -> dict[str, Path]:
    root = REPO / "pipeline"
    out = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def _runtime_imports(path: Path) -> set[str]:
    """Every ``pipeline.*`` name imported anywhere in the file, except under
    ``if TYPE_CHECKING:`` (annotations only, never run)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _runtime_imports(path):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def _rank(package: str) -> tuple[int, int]:
    for floor, names in enumerate(FLOORS):
        if package in names:
            return floor, names.index(package)
    raise AssertionError(f"pipeline/{package} is on no floor: add it to FLOORS")


def test_every_package_imports_only_from_below():
    upward = []
    for module, targets in _graph().items():
        if module == "pipeline":  # the package's __init__: it may import the base floor only
            upward += [f"pipeline -> {t}" for t in targets if _package(t) not in FLOORS[0]]
            continue
        mine = _package(module)
        for target in targets:
            theirs = _package(target)
            if theirs == mine or theirs == "pipeline":
                continue
            if mine in TOP and theirs in TOP:
                upward.append(f"{module} -> {target} (peers)")
            elif _rank(theirs) > _rank(mine):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports up a floor:\n" + "\n".join(sorted(upward))


def test_no_modules_import_each_other_in_a_circle():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_floors_name_every_package():
    packages = {_package(m) for m in _modules() if m != "pipeline"}
    named = {p for floor in FLOORS for p in floor}
    assert packages - {"preflight"} <= named
