"""The package's layers: imports point down only, and no module imports itself back through others.

A lower layer importing a higher one, or a cycle (often hidden by a function-level import), fails here with the
offending import named. Every import counts: module level, inside functions, and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import archivist

ROOT = Path(archivist.__file__).parent

#: Lowest first. A package may import its own modules, its layer's siblings and anything below.
#: The layers of ../shared/design/ARCHITECTURE.md; `testing` (the contract suites) sits with what drives the app.
LAYERS: list[set[str]] = [
    {"types", "config"},
    {"text", "embed", "store", "observe"},
    {"llm", "guard"},
    {"ingest", "retrieve"},
    {"answer"},
    {"agent"},
    # An eval builds an app over each dataset's store; the app never imports an eval (no cycle, checked below).
    {"app", "evals"},
    {"server", "cli", "mcp", "client", "testing"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    """Return every module of the package by dotted name."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Return the package's modules a module imports, anywhere in it (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            # The longest module name the target starts with (`from x import name` names a module or an attribute).
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("archivist.") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_package_has_a_layer() -> None:
    unplaced = {_layer(m) for m in _graph() if m != "archivist" and _layer(m) not in RANK}
    assert not unplaced, f"put these in LAYERS: {sorted(unplaced)}"


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if module != "archivist" and RANK[_layer(target)] > RANK[_layer(module)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = _graph()
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
