"""The base of every configuration section, and sections that come in kinds.

A :class:`Section` is a strict, frozen pydantic model that forbids unknown keys: TOML values are typed, so ``"100"``
for a number is a mistake to report, not to coerce. A section that comes in kinds (``[target]``: a local diffusers
pipeline, an HTTP endpoint, ...) is a discriminated union over a registry: its ``kind`` key picks the model the
rest of the table is validated with (:class:`ByKind`), so a key of another kind is an error, and a kind added to the
registry is accepted without touching the models that hold the section.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, ValidationError, ValidationInfo, field_validator
from pydantic_core import core_schema

from diffmia.errors import ConfigError
from diffmia.registry import Registry, choices

_Model = TypeVar("_Model", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True)
class OneOf:
    """Field metadata (``Annotated[str, OneOf(names)]``): a name that must be one of ``names()`` (a registry's,
    read when a file is validated, so that a registered extension is accepted; the generated docs list them)."""

    names: Callable[[], Iterable[str]]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def check(self, name: Any) -> Any:
        known = list(self.names())
        if name not in known:
            raise ValueError(f"input should be {choices(known)}")
        return name


class _Kind(BaseModel):
    """Only the ``kind`` of a table of some kind, checked against the registry handed in as context."""

    model_config = ConfigDict(extra="ignore", strict=True)
    kind: str

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str, info: ValidationInfo) -> str:
        return cast(Registry[Any], info.context).check(kind)  # the registry that ByKind hands in


@dataclass(frozen=True)
class ByKind:
    """Field metadata (``Annotated[Base, ByKind(REGISTRY, "default kind")]``): a table is validated by the model its
    ``kind`` key names in ``registry`` (``default`` when the key is absent); every problem keeps its dotted path."""

    registry: Registry[type[BaseModel]]
    default: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.validate, handler(source))

    def validate(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # a model instance, or a wrong type that the field's own schema reports
        kind = _Kind.model_validate({"kind": value.get("kind", self.default)}, context=self.registry).kind
        return self.registry[kind].model_validate(value)

    def kinds_with(self, key: str) -> list[str]:
        """The kinds whose tables have ``key`` (for a message about a key given to another kind)."""
        return [name for name, model in self.registry.items() if key in model.model_fields]


class SecretInput(ValueError):
    """A bad value that may hold a secret: its message is reported without the value itself."""


def validated(model: type[_Model], data: Any, source: str) -> _Model:
    """``data`` validated as ``model``; every problem in one :class:`ConfigError`, each with its dotted path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, model, data) for error in exc.errors()]
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"{source}: {count}: " + "; ".join(problems)) from None


def _describe(error: Any, model: type[BaseModel], data: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{loc}: {_unknown_key(model, data, error['loc'])}"
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"] or isinstance(error.get("ctx", {}).get("error"), SecretInput):  # not the whole file again
        return f"{loc}: {message[:1].lower()}{message[1:]}"
    return f"{loc}: {message[:1].lower()}{message[1:]} (got {error['input']!r})"


def _unknown_key(model: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> str:
    """Why a key is unknown, with the key it was probably meant to be, or the kind of section it belongs to."""
    key = str(loc[-1])
    section, table = _section_at(model, data, loc[:-1])
    if section is None:
        return "unknown key"
    by_kind = _by_kind(section)
    if by_kind is not None:
        kind = table.get("kind", by_kind.default) if isinstance(table, dict) else by_kind.default
        others = [k for k in by_kind.kinds_with(key) if k != kind]
        if others:
            return f"unknown key for kind {kind!r} (it belongs to kind {' or '.join(map(repr, others))})"
        section = by_kind.registry.get(str(kind), section)
    known = list(getattr(section, "model_fields", {}))
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (valid keys: {', '.join(known)})" if known else "unknown key"


def _section_at(model: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> tuple[Any, Any]:
    """The field info (or model) that holds the table at ``loc``, and that table as given."""
    current: Any = model
    table = data
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        if field is None or not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None, None
        table = table.get(part) if isinstance(table, dict) else None
        current = field if _by_kind(field) is not None else annotation
    return current, table


def _by_kind(field: Any) -> ByKind | None:
    """The :class:`ByKind` of a field that holds a section of some kind."""
    return next((m for m in getattr(field, "metadata", ()) if isinstance(m, ByKind)), None)
