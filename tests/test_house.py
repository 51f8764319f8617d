"""The house rules of docs/architecture.md, checked on the source: sizes, layers, cycles, lazy imports, tracked files.

Every import counts, including those inside functions and under ``if TYPE_CHECKING:``: a cycle hidden in a
function is still a cycle.
"""

from __future__ import annotations

import ast
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "loopml"

#: Top-level modules and packages of loopml, lowest first: each may import only those before it.
LAYERS = [
    ["errors", "durable", "ownership"],
    ["spec"],
    ["layout"],
    ["tasks"],
    ["datasets"],
    ["data"],
    ["features"],
    ["train"],
    ["registry"],
    ["predlog"],
    ["monitor"],
    ["rollout"],
    ["serve"],
    ["loop"],
    ["project", "scaffold"],
    ["server"],
    ["demo"],
    ["cli"],
    ["__init__", "__main__"],
]
#: Imports allowed inside functions: optional extras (imported only when configured), plotting set up on first use,
#: and the command line's (so that ``--help`` does not load the whole loop). Never to dodge a cycle.
LAZY_ALLOWED = {
    "loopml.features.online.redis",
    "loopml.features.stream",
    "loopml.serve.stream_score",
    "loopml.predlog.postgres",
    "loopml.registry.postgres",
    "psycopg",
    "matplotlib",
    "matplotlib.pyplot",
    "loopml.project",  # the package's lazy export of Project (loopml/__init__.py)
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> Iterator[tuple[ast.stmt, str, bool]]:
    """(statement, imported module, inside a function) for each ``loopml`` module or name imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, id(node) in in_function
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node, node.module, id(node) in in_function
            for alias in node.names:
                yield node, f"{node.module}.{alias.name}", id(node) in in_function


def graph() -> dict[str, set[str]]:
    found = modules()
    edges: dict[str, set[str]] = {m: set() for m in found}
    for module, path in found.items():
        for _node, target, _lazy in imports(module, path):
            if target in found and target != module:
                edges[module].add(target)
    return edges


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_is_over_600_lines_and_the_median_is_at_most_150() -> None:
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules().items()}
    assert not {m: n for m, n in sizes.items() if n > 600}
    assert statistics.median(sizes.values()) <= 150, sorted(sizes.items(), key=lambda kv: -kv[1])[:10]


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_point_down_the_layers() -> None:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            a, b = top(module), top(target)
            assert a in rank and b in rank, f"{module} or {target}: add its package to LAYERS"
            if a != b and rank[b] > rank[a] and not (a == "__init__" and b == "project"):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_imports_inside_functions_are_only_optional_extras_or_the_command_line() -> None:
    lazy = []
    for module, path in modules().items():
        if top(module) == "cli":
            continue
        for node, target, inside in imports(module, path):
            if (
                inside
                and isinstance(node, ast.Import | ast.ImportFrom)
                and target.split(".")[0] in ("loopml", "matplotlib", "psycopg")
            ):
                base = target if isinstance(node, ast.Import) else (node.module or "")
                if base not in LAZY_ALLOWED:
                    lazy.append(f"{module}:{node.lineno} {base}")
    assert sorted(set(lazy)) == []


def test_the_repository_tracks_only_source_no_file_over_1_mb() -> None:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    big = [
        name
        for name in listed.decode().split("\0")
        if name and (ROOT / name).is_file() and (ROOT / name).stat().st_size > 1 << 20
    ]
    assert big == []


def test_project_is_exported_from_the_package() -> None:
    import loopml
    from loopml.project import Project

    assert loopml.Project is Project and "Project" in loopml.__all__
