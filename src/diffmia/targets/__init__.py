"""Targets: the black boxes diffmia queries. Prompts (and optionally images) in, one image per query out.

:data:`TARGETS` is the registry of target kinds: each kind's ``[target]`` section (a :class:`TargetSection`), which
validates its keys and builds the target. A new kind is one file (the target and its section) and one line here.
"""

from __future__ import annotations

from typing import Any

from diffmia.registry import Registry
from diffmia.sections import validated
from diffmia.targets.base import Target, TargetSection
from diffmia.targets.diffusers import DiffusersTargetConfig
from diffmia.targets.http import HTTPTargetConfig

TARGETS: Registry[type[TargetSection]] = Registry(
    "target kind", {"diffusers": DiffusersTargetConfig, "http": HTTPTargetConfig}
)


def target_section(spec: dict[str, Any]) -> TargetSection:
    """The validated section of a plain spec, ``{"kind": ..., **its keys}``."""
    section = TARGETS.lookup(str(spec.get("kind")))
    return validated(section, spec, f"{spec.get('kind')} target")


def make_target(spec: dict[str, Any]) -> Target:
    """A target from a plain spec (what travels to remote workers, so targets are rebuilt there, not pickled)."""
    return target_section(spec).build()


def probe_target(spec: dict[str, Any]) -> None:
    """Check, before hours of work, that the target of ``spec`` can answer: an HTTP endpoint gets one cheap request
    (:meth:`~diffmia.targets.http.HTTPTarget.probe`); a local pipeline is checked where its weights are."""
    target_section(spec).probe()


__all__ = ["TARGETS", "Target", "TargetSection", "make_target", "probe_target", "target_section"]
