"""MkDocs hooks: the reference pages are generated from the code, never copied by hand.

A page says where generated text goes with a marker line; this hook replaces it before the
Markdown is converted:

* ``<!-- generated: api -->``: a mkdocstrings block per name of ``locpick.__all__``;
* ``<!-- generated: cli -->``: every command and option of ``locpick.cli.args.build_parser``;
* ``<!-- generated: config -->``: every section and key of ``locpick.config.model.Config``, with
  its type, default and the ``#:`` comment above it in the source;
* ``<!-- generated: packages -->``: every subpackage of ``locpick/`` with its docstring (what
  it owns, what it may import) and its modules' first docstring lines.

The benchmark plots (``benchmarks/results/*.png``) are added to the site as ``results/``.
``tests/test_docs.py`` imports this module to check the generated text too.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "locpick"
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)

if str(ROOT) not in sys.path:  # the docs build from a checkout, installed or not
    sys.path.insert(0, str(ROOT))


# -- the API reference ------------------------------------------------------------------------
def api_reference() -> str:
    """A mkdocstrings block for every public name (``locpick.__all__``), in that order."""
    import locpick

    blocks = []
    for name in locpick.__all__:
        if name == "__version__":
            continue  # a string, documented in the page's text
        blocks.append(f"## `locpick.{name}`\n\n::: {defining_path(name)}\n")
    return "\n".join(blocks)


def defining_path(name: str) -> str:
    """Where ``locpick.<name>`` is defined (``locpick.client.Client``): the path mkdocstrings
    resolves without following ``locpick``'s imports (which may be lazy); ``locpick.<name>``
    for a value that is not a class or function of locpick's own."""
    import locpick

    obj = getattr(locpick, name)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and module.startswith("locpick") and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return f"locpick.{name}"


# -- the CLI reference ------------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
    else:
        names = f"`{action.metavar or action.dest}`"
        if action.nargs in ("*", "+"):
            names += " ..."
    help_text = action.help or ""
    if action.choices is not None and action.option_strings:
        help_text += " (one of: " + ", ".join(f"`{c}`" for c in action.choices) + ")"
    shown = action.default not in (None, False, [], argparse.SUPPRESS)
    if action.option_strings and shown and f"default {action.default}" not in help_text:
        help_text += f" (default: `{action.default}`)"
    return f"| {_cell(names)} | {_cell(help_text)} |"


def cli_reference() -> str:
    """Every ``locpick`` command: its usage line, what it does, each argument and option."""
    from locpick.cli.args import build_parser

    parser = build_parser()
    helps = _helps(parser)
    out = []
    for name, sub in _subcommands(parser).items():
        usage = sub.format_usage().removeprefix("usage: ").strip()
        out.append(f"### `locpick {name}`\n")
        out.append(f"{helps.get(name, '').capitalize()}.\n")
        out.append("```text\n" + textwrap.dedent(usage) + "\n```\n")
        rows = [
            _option_row(a)
            for a in sub._actions
            if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
        ]
        if rows:
            out.append("| argument | meaning |\n|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


# -- the configuration reference --------------------------------------------------------------
def _comments(cls: type) -> dict[str, str]:
    """Field name -> the ``#:`` comment lines right above it in the class body (a field with
    none shares the comment of the field right above it, as the source groups them)."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    found: dict[str, str] = {}
    previous: str | None = None
    tree = ast.parse(source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    last_end = 0
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            last_end = getattr(node, "end_lineno", last_end)
            previous = None
            continue
        comment: list[str] = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip().removeprefix("#:").strip())
            i -= 1
        if comment:
            text = " ".join(comment)
        elif previous is not None and i + 1 == last_end:  # grouped with the field above
            text = previous
        else:
            text = ""
        found[node.target.id] = text
        previous = text or None
        last_end = node.end_lineno or node.lineno
    return found


def _toml(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{value} ({value >> 20} MiB)"
    return repr(value)


def _section(title: str, cls: type, *, skip: tuple[str, ...] = ()) -> str:
    import attrs

    doc = inspect.getdoc(cls) or ""
    comments = _comments(cls)
    rows = []
    for f in attrs.fields(cls):
        if f.name in skip or f.kw_only:  # keyword-only fields are not settable from a file
            continue
        default = "required" if f.default is attrs.NOTHING else _toml(f.default)
        kind = str(f.type).replace("|", "or")
        rows.append(f"| `{f.name}` | {_cell(kind)} | `{default}` | {_cell(comments[f.name])} |")
    table = "| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows)
    return f"### `{title}`\n\n{doc}\n\n{table}\n"


def config_reference() -> str:
    """Every section and key a config file may hold, from the ``Config`` model."""
    import attrs

    from locpick.config.model import SECTIONS, Config, Filesystem, Hint
    from locpick.config.stores import SwiftRefConfig

    out = []
    for f in attrs.fields(Config):
        if f.name in SECTIONS:
            out.append(_section(f"[{f.name}]", SECTIONS[f.name]))
        elif f.name == "filesystems":
            out.append(_section("[[filesystems]]", Filesystem))
        elif f.name == "hints":
            out.append(_section("[[hints]]", Hint))
        elif f.name == "swift":
            out.append(_section("[swift.refs.REF]", SwiftRefConfig, skip=("name",)))
        elif f.name == "history_file":
            meaning = _comments(Config)["history_file"]
            out.append(f"### `history_file` (top level)\n\n{meaning}\n")
    return "\n".join(out)


# -- the package map --------------------------------------------------------------------------
def subpackages() -> list[str]:
    """Every subpackage of ``locpick/`` as a dotted name, in tree order."""
    found = [
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in sorted(PACKAGE.rglob("__init__.py"))
        if p.parent != PACKAGE and "__pycache__" not in p.parts
    ]
    return sorted(found)


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _first_sentence(text: str) -> str:
    para = " ".join(text.split("\n\n", 1)[0].split())
    match = re.match(r"(.+?\.)(\s|$)", para)
    return match.group(1) if match else para


def package_map() -> str:
    """Each subpackage's docstring and a line per module (its docstring's first sentence)."""
    out = []
    for dotted in subpackages():
        directory = ROOT.joinpath(*dotted.split("."))
        out.append(f"### `{dotted}`\n\n{_docstring(directory / '__init__.py')}\n")
        rows = [
            f"| `{m.stem}` | {_cell(_first_sentence(_docstring(m)))} |"
            for m in sorted(directory.glob("*.py"))
            if m.name != "__init__.py"
        ]
        if rows:
            out.append("| module | what it is |\n|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


GENERATORS = {
    "api": api_reference,
    "cli": cli_reference,
    "config": config_reference,
    "packages": package_map,
}


def expand(markdown: str) -> str:
    """``markdown`` with every generated-marker line replaced by its generated text."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated section {name!r}")
        return GENERATORS[name]()

    return MARKER.sub(one, markdown)


# -- the MkDocs hooks -------------------------------------------------------------------------
def on_page_markdown(markdown: str, **_kwargs: Any) -> str:
    return expand(markdown)


def on_files(files: Any, config: Any, **_kwargs: Any) -> Any:
    from mkdocs.structure.files import File

    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(
            File(
                f"results/{png.name}",
                src_dir=str(ROOT / "benchmarks"),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
