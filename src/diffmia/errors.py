"""The one error family a user sees. Anything else escaping diffmia is a bug.

ConfigError and DataError are also ValueErrors, as scikit-learn and Python conventions expect of bad values.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class DiffmiaError(Exception):
    """A problem the user can act on: the message names what is wrong and, where possible, what to do."""


class ConfigError(DiffmiaError, ValueError):
    """A configuration file, option or constructor argument is invalid."""


class DataError(DiffmiaError, ValueError):
    """Input data (images, feature tables, score files) is missing, malformed or unusable."""


class TargetError(DiffmiaError):
    """A target model could not be loaded or queried."""


class MissingDependencyError(DiffmiaError):
    """An optional dependency is needed for the requested feature but not installed."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "") -> None:
        hint = f"pip install 'diffmia[{extra}]'" if extra else f"pip install {package}"
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"the optional package {package!r} is not installed{what}; install it with: {hint}")
        self.package = package


def optional(module: str, *, extra: str, purpose: str) -> ModuleType:
    """The optional package ``module``, imported; a :class:`MissingDependencyError` naming the extra that installs
    it when it is not installed (``pip install 'diffmia[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(module.split(".")[0], extra=extra, purpose=purpose) from None
