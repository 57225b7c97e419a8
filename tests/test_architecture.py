"""The import contract of the package (docs/architecture.md): layers, no circles, nothing
imports the CLI, the product never imports the tests. Run by ``make lint`` and ``make test``.

Every ``import`` counts, the ones inside functions too: a lazy import keeps ``--help`` fast
but couples the modules all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clsact"

# Top to bottom. A module may import its own layer and the ones below, never one above.
# Within a layer the modules may import each other, but never in a circle.
LAYERS: list[tuple[str, ...]] = [
    ("clsact.cli", "clsact.__main__"),            # argparse: the only entry point
    ("clsact.demo",),                              # `clsact demo` and its props
    ("clsact.launch",),                            # Kubernetes: render, submit, follow
    ("clsact.compress",),                          # the job
    ("clsact.act", "clsact.guard", "clsact.optim", "clsact.distributed",
     "clsact.checkpoint", "clsact.evaluate", "clsact.progress"),  # training, across ranks
    ("clsact.deploy", "clsact.registry"),          # the served model; published runs
    ("clsact.data",),                              # list files, shards, the loader
    ("clsact.compat", "clsact.modelio", "clsact.process", "clsact.doctor",
     "clsact.pruning"),                            # paddle/paddleslim at model level
    ("clsact.config", "clsact.runconfig", "clsact.strategy"),  # the validated, typed config
    ("clsact.storage",),                           # local paths and s3:// behind one API
    ("clsact", "clsact.errors", "clsact.exitcodes", "clsact.logs", "clsact.schema",
     "clsact.gpuarch", "clsact.plotting", "clsact.metrics"),   # the ground floor
]


def module_name(path: Path, root: Path) -> str:
    """``clsact.storage.s3`` for ``<root>/clsact/storage/s3.py`` (a package: its name)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (absolute or relative, at any depth)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in ("clsact", "tests"))
    out.discard(name)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: imports_of(p, name, set(files)) for name, p in files.items()}


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` (0 = top) of the longest prefix naming ``module``.

    Raises:
        KeyError: no layer names it (a new top-level module must be placed).
    """
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            # "clsact" itself (the package's __init__) names no module below it
            if module == prefix or (prefix != "clsact" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module from a layer above its own."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if b.startswith("clsact") and layer_of(b) < layer_of(a))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def named_imports(root: Path = PACKAGE) -> list[tuple[str, str, str | None]]:
    """(importing module, imported module, name or None) of every package import, lazy
    ones included (``from M import a`` gives (.., M, a); ``import M`` gives (.., M, None))."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    out = []
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out += [(name, a.name, None) for a in node.names
                        if a.name.split(".")[0] in ("clsact", "tests")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] in ("clsact", "tests"):
                    out += [(name, base, a.name) for a in node.names]
    return out


def unresolved(imports: list[tuple[str, str, str | None]]) -> list[str]:
    """The imports that would fail when they run: a module that does not exist, or a name
    that is neither a submodule nor defined in the module (imported here to look)."""
    import importlib

    bad = []
    for who, module, name in imports:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            bad.append(f"{who}: import {module} ({exc})")
            continue
        if name is None or hasattr(mod, name):
            continue
        try:
            importlib.import_module(f"{module}.{name}")
        except ImportError:
            bad.append(f"{who}: from {module} import {name}")
    return sorted(set(bad))


GRAPH = import_graph()


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


def test_no_import_runs_up_a_layer():
    assert upward_imports(GRAPH) == []


def test_no_circles():
    assert circles(GRAPH) == []


def test_nothing_imports_the_cli():
    users = sorted(a for a, targets in GRAPH.items() for b in targets
                   if b.startswith("clsact.cli") and not a.startswith("clsact.cli")
                   and a != "clsact.__main__")
    assert users == []


def test_the_product_never_imports_the_tests():
    assert sorted(a for a, targets in GRAPH.items() if any(t.startswith("tests") for t in targets)
                  ) == []


def test_every_import_resolves():
    """Lazy imports inside functions run only when their branch does: check them all now
    (a module moved without its importers fails here, not in a user's run)."""
    assert unresolved(named_imports()) == []
    assert unresolved(named_imports(PACKAGE.parent / "tests")) == []  # benchmarks included
    assert unresolved([("x", "clsact", "history"), ("x", "clsact.registry", "history"),
                       ("x", "clsact.nothing", None)]) == [
        "x: from clsact import history",
        "x: import clsact.nothing (No module named 'clsact.nothing')"]


def test_the_checks_catch_what_they_forbid(tmp_path):
    """The contract fails on a package that breaks it (an upward import, a circle, a CLI
    import, relative imports and imports inside functions included)."""
    pkg = tmp_path / "clsact"
    for folder in ("storage", "cli"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from clsact.storage import s3\n")
    (pkg / "storage" / "s3.py").write_text("from ..errors import f\n")
    (pkg / "storage" / "uri.py").write_text("from clsact.cli import main\n")
    (pkg / "cli" / "main.py").write_text("")
    graph = import_graph(pkg)
    assert graph["clsact.errors"] == {"clsact.storage.s3"}
    assert graph["clsact.storage.s3"] == {"clsact.errors"}
    assert upward_imports(graph) == ["clsact.errors -> clsact.storage.s3",
                                     "clsact.storage.uri -> clsact.cli.main"]
    assert circles(graph) == [["clsact.errors", "clsact.storage.s3"]]
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("clsact.newthing")
