"""The docs stay true to the code: every module, file and dotted name they mention exists, the
architecture page names every subpackage, every public name has a docstring and a place in
the API reference, no internal issue numbers, and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import ROOT

import locpick

DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "how-it-works.md"
TOP = ("locpick", "tests", "benchmarks", "examples", "docs")


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("locpick_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> dict[str, str]:
    """README and every docs page, as written (before generation)."""
    pages = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    for page in sorted(DOCS.glob("*.md")):
        pages[f"docs/{page.name}"] = page.read_text(encoding="utf-8")
    return pages


def _resolves(dotted: str) -> bool:
    """A module, or an attribute of one (``locpick.cache.store.NodeCache``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_module_file_and_dotted_name_in_the_docs_exists() -> None:
    """Paths (locpick/..., tests/..., benchmarks/...), dotted ``locpick.x.y`` names and bare
    ``name.py`` files in README and docs all exist in the tree."""
    basenames = {p.name for top in TOP for p in (ROOT / top).rglob("*.py")}
    missing = []
    for name, text in _pages().items():
        for path in re.findall(rf"(?<![\w/.-])((?:{'|'.join(TOP)})/[\w/.*-]*[\w/*])", text):
            if not (ROOT / path).exists() and not list(ROOT.glob(path)):
                missing.append(f"{name}: {path}")
        for dotted in re.findall(r"(?<![\w/.-])(locpick(?:\.[A-Za-z_]\w*)+)", text):
            if not _resolves(dotted):
                missing.append(f"{name}: {dotted}")
        for bare in re.findall(r"(?<![\w/.-])(\w+\.py)\b", text):
            if bare not in basenames:
                missing.append(f"{name}: {bare}")
    assert not missing, "\n".join(missing)


def _tree(text: str) -> set[str]:
    """The paths drawn in the page's ``locpick/`` tree (``├── name`` lines, 4 columns a level);
    a line naming several files (``a.py, b.py``) gives each."""
    block = re.search(r"```text\n locpick/\n(.*?)```", text, re.S)
    assert block is not None, "no locpick/ tree in the page"
    paths: set[str] = set()
    stack: list[str] = []
    for line in block.group(1).splitlines():
        m = re.match(r"^ ([│ ]*)[├└]── (\S+(?:, \S+)*)", line)
        if m is None:
            continue
        depth = len(m.group(1)) // 4
        names = [n.rstrip(",") for n in m.group(2).split(", ")]
        stack = stack[:depth]
        for name in names:
            paths.add("/".join([*stack, name]))
        stack.append(names[0].rstrip("/"))
    return paths


def test_the_architecture_page_names_every_subpackage() -> None:
    """The hand-drawn tree names each subpackage of locpick/ at its place (``cache/fill/``),
    and everything it draws exists."""
    drawn = _tree(ARCHITECTURE.read_text(encoding="utf-8"))
    subpackages = _hooks().subpackages()
    assert "locpick.cache.fill" in subpackages  # the walk sees nested packages
    absent = [d for d in subpackages if "/".join(d.split(".")[1:]) + "/" not in drawn]
    assert not absent, f"not in {ARCHITECTURE.name}'s tree: {absent}"
    gone = [p for p in drawn if not (ROOT / "locpick" / p).exists()]
    assert not gone, f"drawn in {ARCHITECTURE.name} but not in locpick/: {gone}"


def test_every_public_name_has_a_docstring_and_is_in_the_api_reference() -> None:
    """Each name of ``locpick.__all__`` is documented (a docstring of its own) and rendered
    by the API reference page; ``__version__`` is named in its text."""
    page = (DOCS / "api-reference.md").read_text(encoding="utf-8")
    hooks = _hooks()
    generated = hooks.expand(page)
    undocumented, absent = [], []
    for name in locpick.__all__:
        if name == "__version__":
            if "__version__" not in page:
                absent.append(name)
            continue
        obj = getattr(locpick, name)
        if not (inspect.getdoc(obj) or "").strip():
            undocumented.append(name)
        if f"## `locpick.{name}`\n\n::: {hooks.defining_path(name)}\n" not in generated:
            absent.append(name)
    assert not undocumented, f"no docstring: {undocumented}"
    assert not absent, f"not in the API reference: {absent}"


def test_generated_references_name_every_command_option_and_config_key() -> None:
    """The CLI reference lists every command and option of the parser; the config reference
    every section and key of the model."""
    import argparse

    import attrs

    from locpick.cli.args import build_parser
    from locpick.config.model import SECTIONS

    hooks = _hooks()
    cli = hooks.cli_reference()
    for name, sub in hooks._subcommands(build_parser()).items():
        assert f"`locpick {name}`" in cli
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                for option in action.option_strings:
                    assert f"`{option}`" in cli, (name, option)
    config = hooks.config_reference()
    for section, cls in SECTIONS.items():
        assert f"`[{section}]`" in config
        for f in attrs.fields(cls):
            if not f.kw_only:
                assert f"| `{f.name}` |" in config, (section, f.name)
    for table in ("[[filesystems]]", "[[hints]]", "[swift.refs.REF]", "history_file"):
        assert table in config


def test_no_internal_issue_numbers_in_user_docs() -> None:
    """README and docs (generated text included) speak of the software, not its work items."""
    hooks = _hooks()
    found = []
    for name, text in _pages().items():
        full = hooks.expand(text) if name.startswith("docs/") else text
        found += [f"{name}: {m}" for m in re.findall(r"(?i)\bissues? \d+", full)]
    assert not found, found


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no broken link, no missing page, no unresolved reference."""
    if importlib.util.find_spec("mkdocs") is None or shutil.which("mkdocs") is None:
        hint = "mkdocs is not installed: pip install -e '.[docs]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {hint}")
        pytest.skip(hint)
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "cli" / "index.html").exists()
