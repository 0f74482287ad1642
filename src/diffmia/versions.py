"""diffmia's own version and the versions of the packages that decide its numbers (recorded with every run)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diffmia")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

RECORDED = ("torch", "diffusers", "transformers", "peft", "accelerate", "scikit-learn", "numpy")


def package_versions() -> dict[str, str]:
    """Python's version and each installed package of :data:`RECORDED` (missing ones are left out)."""
    found = {"python": platform.python_version()}
    for package in RECORDED:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
