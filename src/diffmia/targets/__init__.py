"""Targets: the black boxes diffmia queries. Prompts (and optionally images) in, one image per query out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from diffmia.records import Query


class Target(Protocol):
    """A model reachable by prompt. ``generate`` returns one image per query, in order, batching inside."""

    @property
    def fingerprint(self) -> str: ...

    def generate(self, queries: Sequence[Query]) -> list[Image.Image]: ...
