"""docs/cli.md is generated from the command tree: current, complete, and right on a toy app written out by hand."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import typer

from diffmia.cli import app
from diffmia.clidoc import cli_reference, main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEADING = re.compile(r"^#{2,4} `(diffmia(?: [a-z-]+)*)`$", re.MULTILINE)


def _toy() -> typer.Typer:
    """One command with an argument, a bounded option, a choice, a flag pair and a repeatable option; a subgroup."""
    toy = typer.Typer(help="A toy command line.", add_completion=False, rich_markup_mode=None)
    things = typer.Typer(help="Things in a group.")
    toy.add_typer(things, name="things")

    @toy.command()
    def greet(
        name: Annotated[str, typer.Argument(help="Who to greet.")],
        times: Annotated[int, typer.Option(min=1, help="How often.")] = 2,
        style: Annotated[Literal["plain", "loud"], typer.Option("--style", "-s", help="Plain | loud.")] = "plain",
        wave: Annotated[bool, typer.Option(help="Wave too.")] = True,
        tag: Annotated[list[str] | None, typer.Option(help="A tag; repeat for several.")] = None,
    ) -> None:
        """Greet someone by ``name``.

        A second paragraph, with <angle> brackets.
        """

    @things.command("list")
    def things_list(
        where: Annotated[Path | None, typer.Argument(help="A folder.", file_okay=False)] = None,
        every: Annotated[bool, typer.Option("--all", help="Every thing.")] = False,
    ) -> None:
        """List the things."""

    return toy


def _section(text: str, heading: str) -> list[str]:
    """The lines of the section under ``heading``, up to the next heading."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return lines[start:end]


def _commands(command: typer.core.TyperGroup, path: str) -> list[str]:
    """Every command path of a group's tree, read from the group itself (not through diffmia.clidoc)."""
    found = [path]
    for name, sub in command.commands.items():
        if isinstance(sub, typer.core.TyperGroup):
            found += _commands(sub, f"{path} {name}")
        else:
            found.append(f"{path} {name}")
    return found


def test_docs_cli_md_is_the_generated_reference():
    assert DOC.read_text(encoding="utf-8") == cli_reference(), (
        "docs/cli.md is out of date: run `make docs` (or `python -m diffmia.clidoc --out docs/cli.md`)"
    )


def test_a_toy_apps_command_comes_out_as_written_by_hand():
    text = cli_reference(_toy(), name="toy")
    assert _section(text, "## `toy greet`") == [
        "",
        "Greet someone by `name`.",
        "",
        "A second paragraph, with &lt;angle&gt; brackets.",
        "",
        "```text",
        "toy greet [OPTIONS] NAME",
        "```",
        "",
        "| argument or option | type | default | description |",
        "|---|---|---|---|",
        "| `NAME` | string | required | Who to greet. |",
        "| `--times` | integer ≥ 1 | `2` | How often. |",
        "| `--style`, `-s` | one of `plain`, `loud` | `plain` | Plain \\| loud. |",
        "| `--wave` / `--no-wave` | flag | `--wave` | Wave too. |",
        "| `--tag` | string, repeatable | unset | A tag; repeat for several. |",
        "",
    ]


def test_a_toy_apps_group_and_its_command():
    text = cli_reference(_toy(), name="toy")
    assert [line for line in text.splitlines() if line.startswith("#")] == [
        "# Command-line reference",
        "## `toy`",
        "## `toy greet`",
        "## `toy things`",
        "### `toy things list`",
    ]
    assert _section(text, "## `toy things`")[1:5] == [
        "Things in a group.",
        "",
        "```text",
        "toy things [OPTIONS] COMMAND [ARGS]...",
    ]
    assert _section(text, "### `toy things list`")[4:] == [
        "toy things list [OPTIONS] [WHERE]",
        "```",
        "",
        "| argument or option | type | default | description |",
        "|---|---|---|---|",
        "| `WHERE` | dir | unset | A folder. |",
        "| `--all` | flag | off | Every thing. |",
    ]
    assert "| [`toy things list`](#toy-things-list) | List the things. |" in text


def test_every_command_of_the_app_has_a_section_and_every_option_a_row():
    paths = _commands(typer.main.get_command(app), "diffmia")
    text = cli_reference()
    headings = HEADING.findall(text)
    assert len(paths) >= 20  # the walk found the tree: the root, its groups and their commands
    assert sorted(headings) == sorted(paths)
    assert len(headings) == len(set(headings))
    for path in paths:
        if path != "diffmia":
            assert f"| [`{path}`](#{path.replace(' ', '-')}) |" in text, path
    rows = _section(text, "## `diffmia set-test`")
    for flag in ("`RUN_DIR`", "`--candidates`", "`--k`", "`--repeats`", "`--seed`", "`--json`"):
        assert any(row.startswith(f"| {flag} |") for row in rows), flag


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch):
    wide = cli_reference()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert cli_reference() == wide
    assert "\x1b" not in wide


def test_the_module_writes_and_prints_the_reference(tmp_path, capsys):
    out = tmp_path / "docs" / "cli.md"
    assert main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == cli_reference()
    capsys.readouterr()
    assert main([]) == 0
    assert capsys.readouterr().out == cli_reference()
