"""Targets: the black boxes diffmia queries. Prompts (and optionally images) in, one image per query out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image

from diffmia.errors import ConfigError
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget


class Target(Protocol):
    """A model reachable by prompt. ``generate`` returns one image per query, in order, batching inside."""

    @property
    def fingerprint(self) -> str: ...

    def generate(self, queries: Sequence[Query]) -> list[Image.Image]: ...


def make_target(spec: dict[str, Any]) -> Target:
    """A target from a plain spec: ``{"kind": "diffusers" | "http", **constructor arguments}``.

    Specs are what travels to remote workers (Ray actors), so targets are rebuilt there, not pickled.
    """
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind == "diffusers":
        return DiffusersTarget(**options)
    if kind == "http":
        from diffmia.targets.http import HTTPTarget

        return HTTPTarget(**options)
    raise ConfigError(f"unknown target kind {kind!r}; valid: diffusers, http")


def probe_target(spec: dict[str, Any]) -> None:
    """Check, before hours of work, that the target of ``spec`` (as :func:`make_target` takes it) can answer: an
    HTTP endpoint gets one cheap request (:meth:`~diffmia.targets.http.HTTPTarget.probe`); a local pipeline is
    checked where its weights are (nothing to do here)."""
    if spec.get("kind") == "http":
        from diffmia.targets.http import HTTPTarget

        HTTPTarget(**{k: v for k, v in spec.items() if k != "kind"}).probe()
