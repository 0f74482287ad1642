"""diffmia: black-box membership inference against fine-tuned text-to-image diffusion models."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from diffmia.errors import ConfigError, DataError, DiffmiaError, MissingDependencyError, TargetError
from diffmia.records import Evaluation, FeatureTable, Interval, TprAtFpr

try:
    __version__ = version("diffmia")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ConfigError",
    "DataError",
    "DiffmiaError",
    "Evaluation",
    "FeatureTable",
    "Interval",
    "MissingDependencyError",
    "TargetError",
    "TprAtFpr",
    "__version__",
]
