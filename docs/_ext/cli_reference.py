"""The CLI reference page, made from the parser itself when the docs are built (a Sphinx
extension): ``docs/cli.md`` holds the words around it, and at ``source-read`` the marker line in
it is replaced by each command's usage, description, options (grouped as ``--help`` groups
them, with their help as ``--help`` shows it) and epilog. Nothing generated is committed, so the
page cannot drift from ``bulk_update/cli``."""

from __future__ import annotations

import argparse
import re
from typing import Any

from bulk_update.cli import build_parser

__all__ = ["MARKER", "reference", "setup"]

MARKER = "<!-- the reference of every command, generated from the parser, goes here -->"
# CommonMark lets any ASCII punctuation be escaped: help text is shown as written, never read
# as emphasis, a link, a role or a table's column.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def _text(text: str) -> str:
    return _PUNCTUATION.sub(r"\\\1", " ".join(text.split()))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands, by name, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            choices: dict[str, argparse.ArgumentParser] = action.choices
            return dict(choices)
    return {}


def _flags(action: argparse.Action) -> str:
    """``--rpm N``, ``-v``, ``--verbose``, ``INPUT``: as the usage writes them."""
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    value = ""
    if action.nargs != 0:
        metavar = action.metavar
        if metavar is None and action.choices is not None:
            metavar = "{" + ",".join(map(str, action.choices)) + "}"
        value = f" {metavar or action.dest.upper()}"
    return ", ".join(f"`{flag}{value}`" for flag in action.option_strings)


def _block(text: str) -> list[str]:
    return ["```text", text.rstrip("\n"), "```", ""]


def command_reference(name: str, parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    lines = [f"## `bulk-update {name}`", "", *_block(parser.format_usage().strip())]
    if parser.description:
        lines += [_text(parser.description), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        lines += [f"**{_text(group.title or '')}**", "", "| option | what it does |", "|---|---|"]
        for action in actions:
            help_text = formatter._expand_help(action) if action.help else ""
            lines.append(f"| {_flags(action)} | {_text(help_text)} |")
        lines.append("")
    if parser.epilog:
        lines += _block(parser.epilog)
    return "\n".join(lines)


def reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference of every command, as Markdown: the top level's usage and epilog, then
    each subcommand."""
    parser = parser or build_parser()
    lines = [*_block(parser.format_help())]
    for name, subparser in subcommands(parser).items():
        lines += [command_reference(name, subparser), ""]
    return "\n".join(lines)


def _fill(app: Any, docname: str, source: list[str]) -> None:
    if docname == "cli":
        if MARKER not in source[0]:
            raise ValueError(f"docs/cli.md lacks its marker line: {MARKER}")
        source[0] = source[0].replace(MARKER, reference())


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _fill)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
