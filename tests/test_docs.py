"""The docs cannot drift from the code: the generated blocks (the CLI reference from the
parser, the config keys from ``clsact/schema.py``, the exit codes from
``clsact/exitcodes.py``, the module map from the modules' docstrings) are regenerated and
compared, every relative link resolves, and the README stays a front page.

Set CLSACT_UPDATE_GOLDEN=1 to rewrite the generated blocks after an intended change.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end -->)", re.S)
README_MAX_LINES = 230


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rst_to_md(text: str) -> str:
    """``x`` -> `x`; :role:`~a.b.c` -> `c`; :role:`a.b` -> `a.b`."""
    text = re.sub(r":\w+:`~[\w.]*\.(\w+)`", r"`\1`", text)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def first_sentence(path: Path) -> str:
    """The first sentence of a module's docstring, as Markdown."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    para = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?[.:])(\s|$)", para)
    return _rst_to_md(match.group(1) if match else para)


def exit_codes() -> str:
    from clsact import exitcodes

    names = {v: k for k, v in vars(exitcodes).items() if k.isupper() and isinstance(v, int)}
    rows = [f"| {code} | `{names.get(code, '?')}` | {_md_cell(text)} |"
            for code, text in sorted(exitcodes.TABLE.items())]
    return "| code | name | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def module_map() -> str:
    rows = []
    for path in sorted((REPO / "clsact").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        rows.append(f"| `{rel}` | {_md_cell(first_sentence(path))} |")
    for path in sorted((REPO / "tests" / "bench").glob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        rows.append(f"| `{rel}` | {_md_cell(first_sentence(path))} |")
    return "| module | what it is |\n|---|---|\n" + "\n".join(rows) + "\n"


def _walk(parser: argparse.ArgumentParser, prefix: str):
    yield prefix, parser
    for action in parser._actions:  # argparse exposes subparsers only this way
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{prefix} {name}")


def cli_reference() -> str:
    from clsact.cli.main import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"   # argparse wraps at the terminal's width
    try:
        parts = []
        for command, parser in _walk(build_parser(), "clsact"):
            parts.append(f"### `{command}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def _default(value) -> str:
    from clsact import schema

    if value is schema.REQUIRED:
        return "**required**"
    return f"`{value!r}`".replace("None", "null").replace("True", "true").replace("False",
                                                                                  "false")


def config_keys() -> str:
    from clsact import schema

    out = []
    for section, keys in schema.all_sections().items():
        out.append(f"### `{section}`\n\n{schema.SECTION_DOCS[section]}\n")
        docs = schema.KEY_DOCS.get(section)
        out.append("| key | type | default | values |" + (" what |" if docs else "")
                   + "\n|---|---|---|---|" + ("---|" if docs else ""))
        for key, (types, default) in keys.items():
            choices = schema.CHOICES.get((section, key))
            values = ", ".join(f"`{c}`" for c in choices) if choices else ""
            what = f" {_md_cell(docs[key])} |" if docs else ""
            out.append(f"| `{key}` | {types.replace('|', ' or ')} | {_default(default)} | "
                       f"{values} |{what}")
        out.append("")
    return "\n".join(out)


GENERATED: dict[tuple[str, str], Callable[[], str]] = {
    ("README.md", "exit-codes"): exit_codes,
    ("docs/architecture.md", "modules"): module_map,
    ("docs/cli.md", "reference"): cli_reference,
    ("docs/config.md", "keys"): config_keys,
}


@pytest.mark.parametrize("where", sorted(GENERATED), ids=lambda w: f"{w[0]}:{w[1]}")
def test_generated_blocks_are_current(where):
    path, name = REPO / where[0], where[1]
    text = path.read_text(encoding="utf-8")
    blocks = {m["name"]: m for m in BLOCK.finditer(text)}
    assert name in blocks, f"{path} lacks '<!-- generated: {name} -->' ... '<!-- end -->'"
    fresh = GENERATED[where]()
    if os.environ.get("CLSACT_UPDATE_GOLDEN"):
        m = blocks[name]
        text = text[: m.start("body")] + fresh + text[m.end("body"):]
        path.write_text(text, encoding="utf-8")
        return
    assert blocks[name]["body"] == fresh, \
        f"{where[0]} block {name} is stale: CLSACT_UPDATE_GOLDEN=1 pytest tests/test_docs.py"


def test_every_section_and_key_of_clsact_is_described():
    from clsact import schema

    assert set(schema.SECTION_DOCS) == set(schema.all_sections())
    for section, docs in schema.KEY_DOCS.items():
        assert set(docs) == set(schema.all_sections()[section]), section


def test_a_stale_block_is_caught():
    """The comparison fails when the code changes under the docs (a new exit code here)."""
    from clsact import exitcodes

    before = exit_codes()
    exitcodes.TABLE[99] = "a new code"
    try:
        assert exit_codes() != before and "| 99 |" in exit_codes()
    finally:
        del exitcodes.TABLE[99]


def _anchors(path: Path) -> set[str]:
    out = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", path.read_text(encoding="utf-8")):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def relative_links(path: Path) -> list[tuple[str, str]]:
    """(target, anchor) of every relative Markdown link in ``path`` (code blocks skipped)."""
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        links.append((file, anchor))
    return links


PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "charts" / "clsact" / "README.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for file, anchor in relative_links(page):
        target = (page.parent / file).resolve() if file else page
        if not target.exists():
            broken.append(f"{file}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{file}#{anchor}: no such heading")
    assert broken == []


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"
    linked = {f for f, _ in relative_links(REPO / "README.md") if f.startswith("docs/")}
    assert {f"docs/{p.name}" for p in DOCS.glob("*.md")} <= linked, "every page is linked"


def test_help_texts_name_only_codes_of_the_table():
    from clsact import exitcodes
    from clsact.cli.main import build_parser

    text = " ".join(p.format_help() for _, p in _walk(build_parser(), "clsact"))
    named = {int(n) for n in re.findall(r"\b[Ee]xits? (\d+)", text)}
    assert named and named <= set(exitcodes.TABLE), named - set(exitcodes.TABLE)
