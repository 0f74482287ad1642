"""docs/config.md is generated from the config models: current, complete, and its defaults are the models' own."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from diffmia.cli import main
from diffmia.config import Config, ProvenanceFile, StudyConfig
from diffmia.configdoc import config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _model_in(annotation):
    """(model, is a list of models) inside ``annotation`` (Optional and Annotated looked through), else None."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _model_in(inner[0]) if len(inner) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) is list:
        found = _model_in(typing.get_args(annotation)[0])
        return (found[0], True) if found and not found[1] else None
    return None


def _walk(model, prefix=""):
    """Every (dotted key, field) of ``model``; a table's keys under its own, an array of tables' under ``key[]``."""
    for name, field in model.model_fields.items():
        key = prefix + name
        nested = _model_in(field.annotation)
        if nested is None:
            yield key, field
        else:
            yield key, None
            yield from _walk(nested[0], f"{key}[]." if nested[1] else f"{key}.")


def _rows(text):
    """Each table row of the reference: dotted key -> (type, default, description) cells."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\| `([^`]+)` \|(.*)\|", line)
        if match:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", match.group(2))]
            rows[match.group(1)] = tuple(cells)
    return rows


def test_docs_config_md_is_the_generated_reference():
    assert DOC.read_text(encoding="utf-8") == config_reference(), (
        "docs/config.md is out of date: run `diffmia config reference --out docs/config.md`"
    )


@pytest.mark.parametrize("root", [Config, StudyConfig, ProvenanceFile])
def test_every_key_of_every_section_is_documented(root):
    text = config_reference()
    rows = _rows(text)
    keys = list(_walk(root))
    assert len(keys) > 10 if root is Config else len(keys) >= 5
    for key, field in keys:
        if field is None:  # a table: it has a heading of its own
            assert f"### `[{key}]`" in text or f"### `[[{key}]]`" in text, key
        else:
            assert key in rows, f"{key} is not in the reference"


@pytest.mark.parametrize(
    ("key", "printed", "value"),
    [
        ("generation.queries_per_image", "`3`", Config().generation.queries_per_image),
        ("evaluation.fprs", "`[0.01, 0.001]`", Config().evaluation.fprs),
        (
            "finetune.lora_target_modules",
            '`["to_k", "to_q", "to_v", "to_out.0"]`',
            Config().finetune.lora_target_modules,
        ),
    ],
)
def test_printed_defaults_are_the_models_defaults(key, printed, value):
    _, default, _ = _rows(config_reference())[key]
    assert default == printed
    assert tomllib.loads(f"v = {default.strip('`')}")["v"] == value


def test_every_printed_default_loads_back_as_the_model_default():
    rows = _rows(config_reference())
    checked = 0
    for root in (Config, StudyConfig):
        for key, field in _walk(root):
            if field is None:
                continue
            _, default, _ = rows[key]
            if field.is_required():
                assert default == "required", key
            elif field.get_default(call_default_factory=True) is None:
                assert default == "unset", key
            else:
                assert tomllib.loads(f"v = {default.strip('`')}")["v"] == field.get_default(call_default_factory=True)
                checked += 1
    assert checked > 60


def test_types_show_the_models_bounds():
    rows = _rows(config_reference())
    assert rows["audit.overlap"][0] == "float in (0, 1)"
    assert rows["generation.strength"][0] == "float in (0, 1] or array of float in (0, 1]"
    assert rows["finetune.batch_size"][0] == "integer ≥ 1"
    assert rows["finetune.method"][0] == 'one of `"full"`, `"lora"`'
    assert rows["audit.scenarios"][0] == 'non-empty array of one of `"I"`, `"II"`, `"III"`, `"IV"`'


def test_a_fields_comment_in_config_py_is_its_description():
    rows = _rows(config_reference())
    assert rows["target.safety_checker"][2] == "off for audits: a filtered image is not the model's generation"
    assert rows["finetune.early_stopping_patience"][2].startswith("early stopping: hold out validation_fraction")
    assert rows["finetune.validation_fraction"][2] == ""  # a comment above one field does not spill onto the next


def test_the_command_writes_and_prints_the_reference(tmp_path, capsys):
    out = tmp_path / "config.md"
    assert main(["config", "reference", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == config_reference()
    capsys.readouterr()
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == config_reference()
