"""The command-line reference (``docs/cli.md``), generated from the command tree of :data:`diffmia.cli.app`.

Typer turns the app into a tree of commands (``typer.main.get_command``); this module walks it, the root first and
then every command and group by name, each group's commands under it, and writes for each one a heading
(``diffmia NAME [SUB]``), its help text (the function's docstring, paragraphs kept), a usage line and a table of its
arguments and options: the name or flags, the type (choices and bounds included), the default and the help text.
Nothing is written by hand and nothing depends on the terminal (no width, no colour), so the reference cannot drift
from the code; ``tests/test_clidoc.py`` checks that the file in the repository is what :func:`cli_reference`
returns now (``make docs``, or ``python -m diffmia.clidoc --out docs/cli.md``).

Typer 0.29 builds its commands from its own copy of click's classes (``typer.core``), not from the installed
click, so the tree is read through Typer's classes.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from diffmia.cli import app
from diffmia.files import atomic_path

Command = TyperCommand | TyperGroup
Param = TyperArgument | TyperOption
TABLE_HEADER = ("| argument or option | type | default | description |", "|---|---|---|---|")
UNSET = "unset"
REQUIRED = "required"
_TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean", Path: "path"}


@dataclass(frozen=True)
class Entry:
    """One command of the tree: its full name (``diffmia config show``), depth (0 for the root) and command."""

    path: str
    depth: int
    command: Command


def command_tree(root: typer.Typer | Command | None = None, name: str = "diffmia") -> Iterator[Entry]:
    """Every visible command under ``root`` (the diffmia app by default), depth first: a group before its commands,
    the commands of a group in the order of their names."""
    command = _as_command(app if root is None else root)
    yield from _walk(command, name, 0, typer.Context(command, info_name=name))


def _as_command(root: object) -> Command:
    """A Typer app's command tree, or a command of one, as the command it is."""
    command = typer.main.get_command(root) if isinstance(root, typer.Typer) else root
    if not isinstance(command, TyperCommand | TyperGroup):
        raise TypeError(f"not a Typer command: {command!r}")
    return command


def _walk(command: Command, path: str, depth: int, context: typer.Context) -> Iterator[Entry]:
    yield Entry(path, depth, command)
    if not isinstance(command, TyperGroup):
        return
    for name in sorted(command.list_commands(context)):
        sub = command.get_command(context, name)
        if sub is None or sub.hidden:
            continue
        sub = _as_command(sub)
        yield from _walk(sub, f"{path} {name}", depth + 1, typer.Context(sub, info_name=name, parent=context))


def params(command: Command) -> list[Param]:
    """The command's visible arguments and options in their order; ``--help``, which every command has, left out."""
    return [p for p in command.params if isinstance(p, TyperArgument | TyperOption) and not p.hidden]


# --- text ---------------------------------------------------------------------------------------------------


def _markdown(text: str) -> str:
    """Help text as Markdown: reStructuredText literals as code, ``<`` and ``>`` outside code escaped."""
    parts = text.replace("``", "`").split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text for one table cell: on one line, its ``|`` escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def help_text(command: Command) -> str:
    """The command's help (its docstring) as Markdown paragraphs; click's ``\\f`` ends it, as in ``--help``."""
    text = inspect.cleandoc((command.help or "").split("\f")[0])
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "\n\n".join(_markdown(p.replace("\b\n", "")) for p in paragraphs)


def usage(entry: Entry) -> str:
    """The usage line, click's way: ``diffmia set-test [OPTIONS] RUN_DIR``; an optional argument in brackets."""
    command = entry.command
    pieces = [entry.path]
    if command.options_metavar:
        pieces.append(command.options_metavar)
    for param in params(command):
        if isinstance(param, TyperArgument):
            name = param_name(param) + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
    if isinstance(command, TyperGroup):
        pieces.append(command.subcommand_metavar or "COMMAND [ARGS]...")
    return " ".join(pieces)


# --- parameters ---------------------------------------------------------------------------------------------


def param_name(param: Param) -> str:
    """An argument's name as the usage line shows it: its metavar, else its name in capitals."""
    return param.metavar or param.name.upper()


def flags_text(param: Param) -> str:
    """The first cell of a parameter's row, in code: an argument's name, or an option's flags (``--column``,
    ``-c``; a boolean pair as ``--resume`` / ``--no-resume``)."""
    if isinstance(param, TyperArgument):
        return f"`{param_name(param)}`"
    flags = ", ".join(f"`{f}`" for f in param.opts)
    return f"{flags} / {', '.join(f'`{f}`' for f in param.secondary_opts)}" if param.secondary_opts else flags


def type_text(param: Param) -> str:
    """The value a parameter takes: ``flag``, ``one of `a`, `b```, ``file``, ``integer ≥ 1``, ``..., repeatable``."""
    if isinstance(param, TyperOption) and param.is_flag:
        return "flag"
    descriptor = param.type_descriptor
    if descriptor.choices is not None:
        name = "one of " + ", ".join(f"`{_value(c)}`" for c in descriptor.choices)
    elif descriptor.is_path:
        name = descriptor.path_type
    else:
        annotation = descriptor.annotation
        if descriptor.is_list:
            (annotation,) = typing.get_args(annotation) or (str,)
        name = _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    name += _bounds(param.min, param.max)
    return f"{name}, repeatable" if param.multiple or param.nargs != 1 else name


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" ≥ {low}"
    return "" if high is None else f" ≤ {high}"


def _value(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(_value(v) for v in value)
    return str(value)


def default_text(param: Param) -> str:
    """The default as a reader types it: a value in code, ``required``, the flag in effect, or ``unset``."""
    if param.required:
        return REQUIRED
    if isinstance(param.show_default, str):
        return param.show_default
    default = param.default
    if callable(default):
        return "(dynamic)"
    if isinstance(param, TyperOption) and param.is_flag:
        if param.secondary_opts:
            return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
        return "on" if default else "off"
    if default is None or (isinstance(default, list | tuple) and not default):
        return UNSET
    return f"`{_value(default)}`"


def description(param: Param) -> str:
    """The parameter's help text, with the environment variable it reads, if any."""
    text = param.help or ""
    if param.envvar:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        text += f" (environment variable: {', '.join(f'`{n}`' for n in names)})"
    return text


def table(command: Command) -> list[str]:
    """The command's arguments and options, one row each; no table when it has none."""
    rows = [
        f"| {_cell(flags_text(p))} | {_cell(type_text(p))} | {_cell(default_text(p))} "
        f"| {_cell(_markdown(description(p)))} |"
        for p in params(command)
    ]
    return [*TABLE_HEADER, *rows] if rows else []


# --- the page -----------------------------------------------------------------------------------------------


def _summary(command: Command) -> str:
    first = help_text(command).split("\n\n")[0]
    return _cell(first)


def _index(entries: Sequence[Entry]) -> list[str]:
    lines = ["| command | what it does |", "|---|---|"]
    for entry in entries[1:]:
        anchor = entry.path.replace(" ", "-").lower()
        lines.append(f"| [`{entry.path}`](#{anchor}) | {_summary(entry.command)} |")
    return lines


def _section(entry: Entry) -> list[str]:
    heading = "#" * min(max(entry.depth + 1, 2), 4)  # the root and its commands ##, a group's ###
    lines = ["", f"{heading} `{entry.path}`", ""]
    text = help_text(entry.command)
    if text:
        lines += [text, ""]
    lines += ["```text", usage(entry), "```"]
    rows = table(entry.command)
    return [*lines, "", *rows] if rows else lines


def cli_reference(root: typer.Typer | Command | None = None, name: str = "diffmia") -> str:
    """``docs/cli.md``: every command of ``root`` (the diffmia app by default) with its usage and parameters."""
    entries = list(command_tree(root, name))
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated from src/diffmia/cli.py: `make docs` (`python -m diffmia.clidoc --out docs/cli.md`). "
        "Do not edit. -->",
        "",
        f"Every command below also takes `--help`, which prints its text in the terminal (`{name} --help` lists",
        "the commands). A default of unset means the option is absent unless given: its description says what",
        "happens then.",
        "",
        *_index(entries),
    ]
    for entry in entries:
        lines += _section(entry)
    return "\n".join([*lines, ""])


def write_cli_reference(path: str | Path) -> None:
    """Write :func:`cli_reference` to ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(cli_reference(), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diffmia.clidoc [--out PATH]``: print the reference, or write it to PATH."""
    parser = argparse.ArgumentParser(prog="python -m diffmia.clidoc", description=main.__doc__)
    parser.add_argument("--out", type=Path, help="write the reference to this file instead of printing it")
    args = parser.parse_args(argv)
    if args.out is None:
        sys.stdout.write(cli_reference())
    else:
        write_cli_reference(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
