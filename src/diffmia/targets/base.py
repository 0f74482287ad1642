"""What every target is: a black box that answers queries with images, and the ``[target]`` section of each kind."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from PIL import Image

from diffmia.records import Query
from diffmia.sections import Section


class Target(Protocol):
    """A model reachable by prompt. ``generate`` returns one image per query, in order, batching inside."""

    @property
    def fingerprint(self) -> str: ...

    def generate(self, queries: Sequence[Query]) -> list[Image.Image]: ...


class TargetSection(Section):
    """The model under audit, reached by prompt: a local diffusers pipeline (with LoRA weights) or an HTTP endpoint.
    Ignored when ``audit.finetune_target`` is set (the built-in demo fine-tunes its target)."""

    # each kind's section validates its keys and builds its target; spec() is the plain form that travels to remote
    # workers, where diffmia.targets.make_target rebuilds the target

    kind: str = "diffusers"  # which kind of target the table describes; its keys depend on it
    has_weights: ClassVar[bool] = False  # whether the audit holds the weights (gray-box baselines read them)

    def spec(self) -> dict[str, Any]:
        return self.model_dump()

    @abstractmethod
    def build(self) -> Target:
        """The target itself (its weights, or a connection, load lazily)."""

    def probe(self) -> None:
        """Check, before hours of work, that the target can answer (nothing to check by default)."""

    def regime(self) -> dict[str, Any]:
        """What the run records of a given target: its settings, without anything secret."""
        return {"given": True, **self.spec()}
