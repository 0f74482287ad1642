"""Attack models: scikit-learn binary classifiers fitted on shadow features; higher score = member."""

from __future__ import annotations

from collections.abc import Mapping

from sklearn.base import clone

from diffmia.attacks._base import MembershipAttack
from diffmia.attacks.classifier import ClassifierAttack
from diffmia.attacks.distribution import DistributionAttack
from diffmia.attacks.threshold import REDUCTIONS, ThresholdAttack
from diffmia.errors import ConfigError, DataError
from diffmia.records import FeatureTable, FloatArray


def fit_and_score(
    attacks: Mapping[str, MembershipAttack], shadow: FeatureTable, target: FeatureTable
) -> dict[str, FloatArray]:
    """Fit each attack on the labelled shadow table, freeze it, and score the target table once.

    The target's labels, if any, are never looked at. The target's feature columns are matched to the
    shadow's by name; a threshold attack may name its column.
    """
    if shadow.y is None:
        raise DataError("the shadow feature table has no membership labels; attacks are fitted on labelled shadow data")
    missing = [n for n in shadow.names if n not in target.names]
    extra = [n for n in target.names if n not in shadow.names]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"the target lacks {', '.join(missing)}")
        if extra:
            problems.append(f"the shadow lacks {', '.join(extra)}")
        raise DataError(f"shadow and target feature columns differ: {'; '.join(problems)}")
    X_target = target.X[:, [target.names.index(n) for n in shadow.names]]
    scores = {}
    for name, attack in attacks.items():
        model = clone(attack)
        reduce = model.get_params().get("reduce")
        if isinstance(model, ThresholdAttack) and isinstance(reduce, str) and reduce not in REDUCTIONS:
            if reduce not in shadow.names:
                raise ConfigError(
                    f"threshold attack: reduce={reduce!r} is not a feature column ({', '.join(shadow.names)})"
                )
            model.set_params(reduce=shadow.names.index(reduce))
        model.fit(shadow.X, shadow.y)
        scores[name] = model.decision_function(X_target)
    return scores


__all__ = [
    "ClassifierAttack",
    "DistributionAttack",
    "MembershipAttack",
    "ThresholdAttack",
    "fit_and_score",
]
