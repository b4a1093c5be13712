"""The package's import graph: no circles, and the rules that keep the parts independent of the runner."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vae_experiments"

# (importing module prefix, imported module prefix): never
NEVER = [
    ("vae_experiments.distributions", "lightning"),
    ("vae_experiments.nets", "lightning"),
    ("vae_experiments.objectives", "lightning"),
    ("vae_experiments.objectives", "vae_experiments.module"),
    ("vae_experiments.model", "vae_experiments.module"),
    ("vae_experiments.model", "vae_experiments.objectives"),
    ("vae_experiments.distributions", "vae_experiments.objectives"),
    ("vae_experiments.data", "vae_experiments.model"),
    ("vae_experiments.data", "vae_experiments.module"),
    ("vae_experiments.data", "vae_experiments.objectives"),
    ("vae_experiments.data", "vae_experiments.distributions"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, type-checking-only imports included (a circle there is still a circle)."""
    tree = ast.parse(path.read_text())
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in files and i != name} for name, path in files.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle() -> None:
    assert circles(graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("importer", "imported"), NEVER, ids=[f"{a}-{b}" for a, b in NEVER])
def test_a_part_never_imports_the_runner(importer: str, imported: str) -> None:
    offenders = [
        (path.relative_to(PACKAGE.parent), name)
        for path in PACKAGE.rglob("*.py")
        if module_name(path).startswith(importer)
        for name in imports_of(path)
        if name == imported or name.startswith(imported + ".")
    ]
    assert offenders == []


def test_relative_and_absolute_imports_are_both_seen() -> None:
    assert "vae_experiments.model" in imports_of(PACKAGE / "objectives" / "elbo.py")
    assert {"lightning"} <= imports_of(PACKAGE / "module.py")
