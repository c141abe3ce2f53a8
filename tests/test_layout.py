"""The layout is the architecture (see the package docstrings): checks that keep it so.

import-linter (``lint-imports``, run by ``.ci/run``) keeps the layers between subpackages; these
checks keep what it does not see: no import cycle between modules (type-only imports
included), no module re-exporting names it does not define, every subpackage saying what it
owns, and the value modules at the bottom importing no package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "locpick"
#: The value modules below every subpackage (they may import each other and config).
VALUES = {"models", "errors", "reasons", "redact", "s3url"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``from locpick... import`` in ``path`` (nested ones too) as (module, names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "locpick" or node.module.startswith("locpick."):
                found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("locpick.")]
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = set()
        for module, names in _imports(path):
            for imported in names:
                if f"{module}.{imported}" in MODULES:
                    deps.add(f"{module}.{imported}")
                    break
            else:
                if module in MODULES:
                    deps.add(module)
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        member = stack.pop()
                        on.discard(member)
                        comp.append(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_type_only_imports_included() -> None:
    assert _cycles(_graph()) == []


def test_no_module_re_exports_what_it_does_not_define() -> None:
    """Only the public API (``locpick/__init__.py``) re-exports; every other import of a name
    goes to the module that defines it, so "go to definition" never lands on a shim."""
    shims = []
    for name, path in MODULES.items():
        if name == "locpick":
            continue
        tree = ast.parse(path.read_text())
        imported = {
            a.asname or a.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            for a in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                listed = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}  # type: ignore[attr-defined]
                shims += [f"{name}: {n}" for n in sorted(listed & imported)]
    assert shims == []


PACKAGES = sorted(n for n, p in MODULES.items() if p.name == "__init__.py")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and len(doc) > 60, f"{package} has no docstring saying what it owns"


def test_value_modules_import_no_package() -> None:
    """models, errors, reasons, redact, s3url sit below every subpackage (config aside)."""
    upward = []
    for value in VALUES:
        for module, _ in _imports(MODULES[f"locpick.{value}"]):
            top = module.split(".")[1] if "." in module else ""
            if top not in VALUES and top != "config":
                upward.append(f"locpick.{value} imports {module}")
    assert upward == []


def test_no_environment_read_below_the_edge() -> None:
    """Only ``locpick.config.env`` reads the process environment; everything else gets the
    snapshot it took (``Environment``), so ``Client(env=...)`` is honoured everywhere."""
    readers = [
        name
        for name, path in MODULES.items()
        if name != "locpick.config.env"
        and any(
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert readers == []
