"""diffmia: black-box membership inference against fine-tuned text-to-image diffusion models.

The public API: run an audit from a configuration, read a finished run back, and the pieces an attack is built of.

>>> from diffmia import load_config, run_audit, load_run
>>> result = run_audit(load_config("audit.toml"))          # doctest: +SKIP
>>> load_run(result.run_dir).headline_set("I").evaluation  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from diffmia.errors import ConfigError, DataError, DiffmiaError, MissingDependencyError, TargetError
from diffmia.versions import __version__

# loaded on first use, so that `import diffmia` (and the command line's start) stays light
_EXPORTS = {
    "diffmia.attacks": ("ClassifierAttack", "DistributionAttack", "ThresholdAttack", "fit_attacks", "score_with"),
    "diffmia.audit": ("run_audit",),
    "diffmia.config": ("Config", "load_config", "parse_config"),
    "diffmia.metrics": ("evaluate",),
    "diffmia.provenance.result": ("ProvenanceResult", "load_provenance"),
    "diffmia.provenance.run": ("run_provenance",),
    "diffmia.records": ("Evaluation", "FeatureTable", "Interval", "Query", "Sample", "ScoreSet", "TprAtFpr"),
    "diffmia.results": ("RunResult", "load_run"),
    "diffmia.settest": ("set_test",),
    "diffmia.targets": ("Target", "make_target"),
    "diffmia.targets.diffusers": ("DiffusersTarget",),
    "diffmia.targets.http": ("HTTPTarget",),
}
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from diffmia.attacks import ClassifierAttack, DistributionAttack, ThresholdAttack, fit_attacks, score_with
    from diffmia.audit import run_audit
    from diffmia.config import Config, load_config, parse_config
    from diffmia.metrics import evaluate
    from diffmia.provenance.result import ProvenanceResult, load_provenance
    from diffmia.provenance.run import run_provenance
    from diffmia.records import Evaluation, FeatureTable, Interval, Query, Sample, ScoreSet, TprAtFpr
    from diffmia.results import RunResult, load_run
    from diffmia.settest import set_test
    from diffmia.targets import Target, make_target
    from diffmia.targets.diffusers import DiffusersTarget
    from diffmia.targets.http import HTTPTarget


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'diffmia' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ClassifierAttack",
    "Config",
    "ConfigError",
    "DataError",
    "DiffmiaError",
    "DiffusersTarget",
    "DistributionAttack",
    "Evaluation",
    "FeatureTable",
    "HTTPTarget",
    "Interval",
    "MissingDependencyError",
    "ProvenanceResult",
    "Query",
    "RunResult",
    "Sample",
    "ScoreSet",
    "Target",
    "TargetError",
    "ThresholdAttack",
    "TprAtFpr",
    "__version__",
    "evaluate",
    "fit_attacks",
    "load_config",
    "load_provenance",
    "load_run",
    "make_target",
    "parse_config",
    "run_audit",
    "run_provenance",
    "score_with",
    "set_test",
]
