"""The configuration reference (``docs/config.md``), generated from the pydantic models of :mod:`diffmia.config`.

Every section is a model: its docstring is the section's text, and each field is one row with its dotted key, its
type (with the model's bounds), its default (as TOML, so it can be pasted into a file) and its description: the
field's ``Field(description=...)``, else the comment beside it (or right above it) in ``config.py``. Nothing is
written by hand, so the reference cannot drift from the code; ``tests/test_configdoc.py`` checks that the file in
the repository is what :func:`config_reference` returns now (``diffmia config reference --out docs/config.md``).
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from diffmia.config import Config, ProvenanceFile, StudyConfig
from diffmia.files import atomic_path
from diffmia.sections import ByKind, OneOf

# the order a reader meets the sections in: what is audited first, the statistics last; sections not listed here
# (a new one) follow in the model's own order, so none is ever left out
SECTION_ORDER = (
    "audit",
    "data",
    "target",
    "generation",
    "features",
    "attacks",
    "finetune",
    "captioner_training",
    "evaluation",
)
UNSET = "unset"
REQUIRED = "required"


@dataclass(frozen=True)
class Section:
    """One table of a TOML file: its dotted path, whether it is an array of tables, and the model behind it. A table
    that comes in kinds (:class:`~diffmia.sections.ByKind`) is one section for its ``kind`` key (``kinds``), then one
    per kind (``kind``) for that kind's keys."""

    path: str
    model: type[BaseModel]
    array: bool = False
    optional: bool = False
    required: bool = False
    kinds: ByKind | None = None
    kind: str | None = None

    @property
    def key_prefix(self) -> str:
        return f"{self.path}[]." if self.array else f"{self.path}."

    @property
    def heading(self) -> str:
        return f"[[{self.path}]]" if self.array else f"[{self.path}]"

    @property
    def title(self) -> str:
        return f"`{self.heading}` with `kind = {_toml(self.kind)}`" if self.kind else f"`{self.heading}`"


def sections(root: type[BaseModel], order: tuple[str, ...] = ()) -> Iterator[Section]:
    """The sections of ``root``, depth first: each table before the tables nested in it."""
    names = list(root.model_fields)
    names = [n for n in order if n in names] + [n for n in names if n not in order]
    for name in names:
        yield from _sections_of(name, root.model_fields[name])


def _sections_of(path: str, field: FieldInfo) -> Iterator[Section]:
    nested = _nested_model(field.annotation)
    if nested is None:
        return
    model, array, optional = nested
    kinds = next((m for m in field.metadata if isinstance(m, ByKind)), None)
    yield Section(path, model, array, optional, field.is_required(), kinds)
    if kinds is not None:
        yield from (Section(path, kind_model, kind=name) for name, kind_model in kinds.registry.items())
        return
    prefix = f"{path}[]." if array else f"{path}."
    for name, sub in model.model_fields.items():
        yield from _sections_of(prefix + name, sub)


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool, bool] | None:
    """(model, is an array of tables, may be left out) when ``annotation`` is a table; None for a plain value."""
    annotation, _ = _unwrap(annotation)
    optional = False
    args = typing.get_args(annotation)
    if _is_union(annotation) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        annotation, _ = _unwrap(rest[0])
        optional = True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False, optional
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        item, _ = _unwrap(item)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True, optional
    return None


def fields(section: Section) -> list[tuple[str, FieldInfo]]:
    """The plain (non-table) fields of a section, with their dotted keys (of a kind's section, all but ``kind``,
    which the section of the table's kinds documents)."""
    return [
        (section.key_prefix + name, field)
        for name, field in section.model.model_fields.items()
        if _nested_model(field.annotation) is None and not (section.kind and name == "kind")
    ]


# --- types --------------------------------------------------------------------------------------------------


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, ...]`` -> (T, its constraints); anything else comes back with no constraints."""
    constraints: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            constraints += item.metadata if isinstance(item, FieldInfo) else [item]
    return annotation, constraints


_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean"}


def type_name(annotation: Any, constraints: list[Any] | None = None) -> str:
    """A TOML reader's name for a field's type, with its bounds (``integer ≥ 1``, ``array of float in (0, 1]``)."""
    annotation, inner = _unwrap(annotation)
    constraints = [*(constraints or []), *inner]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    one_of = next((c for c in constraints if isinstance(c, OneOf)), None)
    if one_of is not None:  # a name checked against a registry: its names now
        name = "one of " + ", ".join(f"`{_toml(n)}`" for n in one_of.names())
    elif _is_union(annotation):
        kinds = [type_name(a) for a in args if a is not type(None)]
        name = " or ".join(kinds)
    elif origin is typing.Literal:
        name = "one of " + ", ".join(f"`{_toml(a)}`" for a in args)
    elif origin is list:
        item = type_name(args[0]) if args else "values"
        name = f"array of ({item})" if args and _is_union(_unwrap(args[0])[0]) else f"array of {item}"
    elif origin is dict:
        name = "table"
    elif annotation is Any:
        name = "any value"
    else:
        name = _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return _constrained(name, constraints)


def _constrained(name: str, constraints: list[Any]) -> str:
    low = high = None
    extra = []
    for c in constraints:
        if isinstance(c, annotated_types.Gt):
            low = f"({_number(c.gt)}"
        elif isinstance(c, annotated_types.Ge):
            low = f"[{_number(c.ge)}"
        elif isinstance(c, annotated_types.Lt):
            high = f"{_number(c.lt)})"
        elif isinstance(c, annotated_types.Le):
            high = f"{_number(c.le)}]"
        elif isinstance(c, annotated_types.MinLen):
            name = ("non-empty " if c.min_length == 1 else f"at least {c.min_length} of: ") + name
        elif isinstance(c, annotated_types.MaxLen):
            extra.append(f"at most {c.max_length} items")
        elif getattr(c, "pattern", None):
            extra.append(f"matching `{c.pattern}`")
    if low and high:
        name += f" in {low}, {high}"
    elif low:
        name += (" > " if low[0] == "(" else " ≥ ") + low[1:]
    elif high:
        name += (" < " if high[-1] == ")" else " ≤ ") + high[:-1]
    return ", ".join([name, *extra])


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- defaults and descriptions ------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    """``value`` as a TOML value (inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | int):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}" if value else "{}"
    return json.dumps(value)


def default_text(field: FieldInfo) -> str:
    """The default as printed: a TOML value, ``unset`` (None: the key is left out), or ``required``."""
    if field.is_required():
        return REQUIRED
    value = field.get_default(call_default_factory=True)
    return UNSET if value is None else f"`{_toml(value)}`"


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comment in the model's source: the one at the end of its line, else the block right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):  # no source (a frozen build): the types and defaults still document the field
        return {}
    by_line: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if not re.fullmatch(r"(fmt|type|noqa)\b.*", text):
                by_line[token.start[0]] = text
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(token.start[0])
    (cls,) = ast.parse(source).body
    found = {}
    for node in getattr(cls, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        trailing = [by_line[n] for n in lines if n in by_line]
        above: list[str] = []
        n = node.lineno - 1
        while n in by_line and n not in code_lines:
            above.insert(0, by_line[n])
            n -= 1
        text = " ".join(trailing or above)
        if text:
            found[node.target.id] = text
    return found


def _markdown(text: str) -> str:
    """A docstring's reStructuredText roles and literals as Markdown."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return _html_safe(text.replace("``", "`"))


def _html_safe(text: str) -> str:
    """``<`` and ``>`` outside code spans escaped, so that ``<run directory>`` is not read as an HTML tag."""
    parts = text.split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return "`".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section_text(section: Section) -> str:
    doc = inspect.getdoc(section.model) if section.model.__doc__ else ""
    parts = [_markdown(doc or "")]
    if section.kinds is not None:
        listed = ", ".join(f"`{_toml(k)}`" for k in section.kinds.registry)
        parts.append(
            f"The table comes in kinds ({listed}): its `kind` key, `{_toml(section.kinds.default)}` when it is left "
            "out, says which keys it takes; each kind's keys follow. A key of another kind is an error."
        )
    if section.array:
        count = "at least one is required" if section.required else "none by default"
        parts.append(f"An array of tables: repeat `{section.heading}` once per item ({count}).")
    elif section.optional:
        parts.append("Optional: left out by default.")
    return "\n\n".join(p for p in parts if p)


def _table(section: Section) -> list[str]:
    rows = fields(section)
    if not rows:
        return []
    comments = _comments(section.model)
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, field in rows:
        description = field.description or comments.get(key.rsplit(".", 1)[-1], "")
        kind = type_name(field.annotation, list(field.metadata))
        if section.kinds is not None and key.endswith(".kind"):
            kind = "one of " + ", ".join(f"`{_toml(k)}`" for k in section.kinds.registry)
        lines.append(f"| `{key}` | {_cell(kind)} | {_cell(default_text(field))} | {_cell(_markdown(description))} |")
    return lines


def _render(root: type[BaseModel], order: tuple[str, ...], only: str | None = None) -> list[str]:
    lines: list[str] = []
    for section in sections(root, order):
        if only is not None and section.path != only:
            continue
        lines += ["", f"### {section.title}", ""]
        text = _section_text(section)
        if text:
            lines += [text, ""]
        lines += _table(section)
    return lines


def config_reference() -> str:
    """``docs/config.md``: every section and key of an audit configuration, a study file and a provenance file."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from src/diffmia/config.py: `diffmia config reference --out docs/config.md`. Do not edit. -->",
        "",
        "An audit (`diffmia run`), `diffmia generate` and the `--config` option of the other commands read one TOML",
        "file of the sections below; a section or key not marked required may be left out, and then takes its default.",
        "`diffmia config show FILE` prints a file resolved (every default filled in), `diffmia demo --print-config`",
        "the demo's. Unknown keys, wrong types and out-of-range values are reported together, each with its dotted",
        "path. Values are typed as TOML types them: `100` for an integer, never `'100'`. A key written",
        "`section[].key` belongs to each table of an array of tables (`[[section]]`). A default of unset means the",
        "key is absent unless given: the description (or the section's text) says what happens then.",
        "",
        "## Audit configuration",
        *_render(Config, SECTION_ORDER),
        "",
        "## Study files",
        "",
        "A study file (`diffmia study STUDY.toml`) holds one `[study]` table and its `[[study.factors]]`; each level",
        "of a factor sets one dotted key of the audit configuration above (or, without `key`, several together).",
        *_render(StudyConfig, ()),
        "",
        "## Provenance files",
        "",
        "A provenance file (`diffmia provenance --config FILE`) holds the `[target]`, `[generation]`, `[features]` and",
        "`[evaluation]` sections of an audit configuration, as above (base-calibrated features are always on), and one",
        "`[provenance]` table; the command's arguments and options set the keys they name.",
        *_render(ProvenanceFile, (), only="provenance"),
        "",
    ]
    return "\n".join(lines)


def write_config_reference(path: str | Path) -> None:
    """Write :func:`config_reference` to ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(config_reference(), encoding="utf-8")
