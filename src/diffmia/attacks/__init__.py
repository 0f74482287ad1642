"""Attack models: scikit-learn binary classifiers fitted on shadow features; higher score = member.

:data:`ATTACKS` is the registry of attack models: an estimator class per name, built with its defaults unless the
configuration has a section of settings for it (``[attacks.threshold]``, ...). A new attack is one file (its
estimator, a :class:`MembershipAttack`) and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone

from diffmia.attacks._base import MembershipAttack
from diffmia.attacks.classifier import ClassifierAttack
from diffmia.attacks.distribution import DistributionAttack
from diffmia.attacks.threshold import REDUCTIONS, ThresholdAttack
from diffmia.errors import ConfigError, DataError
from diffmia.metrics import roc_auc, tpr_at_fpr
from diffmia.records import FeatureTable, FloatArray
from diffmia.registry import Registry

ATTACKS: Registry[type[MembershipAttack]] = Registry(
    "attack", {"threshold": ThresholdAttack, "distribution": DistributionAttack, "classifier": ClassifierAttack}
)


def _aligned(names: tuple[str, ...], table: FeatureTable) -> FloatArray:
    """``table``'s feature matrix with its columns in the order of ``names`` (the shadow's)."""
    missing = [n for n in names if n not in table.names]
    extra = [n for n in table.names if n not in names]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"the target lacks {', '.join(missing)}")
        if extra:
            problems.append(f"the shadow lacks {', '.join(extra)}")
        raise DataError(f"shadow and target feature columns differ: {'; '.join(problems)}")
    return table.X[:, [table.names.index(n) for n in names]]


def _column_indices(reduce: Any, names: tuple[str, ...]) -> Any:
    """A threshold attack's ``reduce`` with the column names it holds (one, or a list) replaced by their indices."""
    if isinstance(reduce, (list, tuple)):
        return [_column_indices(r, names) for r in reduce]
    if not isinstance(reduce, str) or reduce in REDUCTIONS:
        return reduce
    if reduce not in names:
        raise ConfigError(f"threshold attack: reduce={reduce!r} is not a feature column ({', '.join(names)})")
    return names.index(reduce)


def fit_attacks(attacks: Mapping[str, MembershipAttack], shadow: FeatureTable) -> dict[str, MembershipAttack]:
    """A fitted copy of each attack, fitted on the labelled shadow table only."""
    if shadow.y is None:
        raise DataError("the shadow feature table has no membership labels; attacks are fitted on labelled shadow data")
    fitted = {}
    for name, attack in attacks.items():
        model = clone(attack)
        if isinstance(model, ThresholdAttack):
            model.set_params(reduce=_column_indices(model.reduce, shadow.names))
        fitted[name] = model.fit(shadow.X, shadow.y)
    return fitted


def score_with(
    fitted: Mapping[str, MembershipAttack], names: tuple[str, ...], table: FeatureTable
) -> dict[str, FloatArray]:
    """The frozen attacks' scores of ``table``, its columns matched by name to the shadow's ``names``."""
    X = _aligned(names, table)
    return {name: model.decision_function(X) for name, model in fitted.items()}


def fit_and_score(
    attacks: Mapping[str, MembershipAttack], shadow: FeatureTable, target: FeatureTable
) -> dict[str, FloatArray]:
    """Fit each attack on the labelled shadow table, freeze it, and score the target table once.

    The target's labels, if any, are never looked at. The target's feature columns are matched to the
    shadow's by name; a threshold attack may name its column.
    """
    _aligned(shadow.names, target)  # mismatched columns are reported before anything is fitted
    return score_with(fit_attacks(attacks, shadow), shadow.names, target)


@dataclass(frozen=True)
class ShadowValidation:
    """An attack's out-of-fold performance on shadow data: each shadow row scored by the attack fitted without it."""

    auc: float
    tpr: float  # at ``fpr``, on all out-of-fold scores together
    fpr: float
    folds: int


def shadow_folds(labels: Any, groups: Any = None, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """The fold of each shadow row: one fold per group (shadow model) when ``groups`` holds several, else ``folds``
    seeded folds that split members and non-members alike (stratified)."""
    y = np.asarray(labels, dtype=bool)
    if groups is not None and len(np.unique(groups)) > 1:
        return np.unique(np.asarray(groups), return_inverse=True)[1]
    if min(y.sum(), (~y).sum()) < folds:
        raise DataError(
            f"cross-validation in {folds} folds needs at least {folds} shadow members and non-members, "
            f"got {int(y.sum())} and {int((~y).sum())}"
        )
    fold = np.empty(len(y), dtype=int)
    rng = np.random.default_rng([seed, 11])
    for cls in (True, False):
        rows = np.flatnonzero(y == cls)
        fold[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return fold


def cross_validate(
    attacks: Mapping[str, MembershipAttack],
    shadow: FeatureTable,
    *,
    groups: Any = None,
    folds: int = 5,
    seed: int = 0,
    fpr: float = 0.01,
) -> dict[str, ShadowValidation]:
    """Each attack's out-of-fold AUC and TPR at ``fpr`` on the labelled shadow table (folds by :func:`shadow_folds`):
    a measure of the attack that never looks at the target."""
    if shadow.y is None:
        raise DataError("the shadow feature table has no membership labels; attacks are fitted on labelled shadow data")
    fold = shadow_folds(shadow.y, groups, folds=folds, seed=seed)
    scores = {name: np.empty(len(shadow.y)) for name in attacks}
    ids, ks = np.asarray(shadow.sample_ids), np.unique(fold)
    for k in ks:
        fit, held = fold != k, fold == k
        part = FeatureTable(tuple(ids[fit]), shadow.X[fit], shadow.names, shadow.y[fit])
        held_out = FeatureTable(tuple(ids[held]), shadow.X[held], shadow.names)
        for name, s in score_with(fit_attacks(attacks, part), shadow.names, held_out).items():
            scores[name][held] = s
    return {
        name: ShadowValidation(roc_auc(s, shadow.y), tpr_at_fpr(s, shadow.y, fpr).tpr, fpr, len(ks))
        for name, s in scores.items()
    }


__all__ = [
    "ATTACKS",
    "ClassifierAttack",
    "DistributionAttack",
    "MembershipAttack",
    "ShadowValidation",
    "ThresholdAttack",
    "cross_validate",
    "fit_and_score",
    "fit_attacks",
    "score_with",
    "shadow_folds",
]
