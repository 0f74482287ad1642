"""Registries: one name-to-entry table per extension axis (attacks, baselines, target kinds, similarities, encoders,
scenarios).

A registry is the one place a name is defined: the configuration checks its names against it (so a new entry is
accepted without touching the config models), the command-line help and the generated docs list its names, and the
stage that uses the axis looks its entries up in it. Adding an attack, say, is one file (the estimator) and one
line in :data:`diffmia.attacks.ATTACKS`; a test may add a toy entry for its own run (``monkeypatch.setitem``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from diffmia.errors import ConfigError

T = TypeVar("T")


def choices(names: Iterable[str]) -> str:
    """Names as a configuration message lists the valid ones: "'a', 'b' or 'c'" (pydantic's words for a Literal)."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class Registry(dict[str, T]):
    """The entries of one extension axis by name, in the order they were registered."""

    def __init__(self, axis: str, entries: dict[str, T]) -> None:
        super().__init__(entries)
        self.axis = axis

    def names(self) -> str:
        """The registered names for help text: "a, b, c"."""
        return ", ".join(self)

    def check(self, name: str) -> str:
        """``name`` if it is registered, else a ValueError naming the valid ones (a config validator's error, worded
        as pydantic words a ``Literal``'s)."""
        if name not in self:
            raise ValueError(f"input should be {choices(self)}")
        return name

    def lookup(self, name: str) -> T:
        """The entry of ``name``; a :class:`ConfigError` naming the valid ones when there is none."""
        try:
            return self[name]
        except KeyError:
            raise ConfigError(f"unknown {self.axis} {name!r}; valid: {self.names()}") from None
