"""Threshold attack: one scalar per sample, a threshold chosen on shadow data by Youden's J."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffmia.attacks._base import MembershipAttack
from diffmia.errors import ConfigError
from diffmia.metrics import column_aucs, roc_curve
from diffmia.records import FloatArray

REDUCTIONS = ("mean", "max")


class ThresholdAttack(MembershipAttack):
    """Call a sample a member when its scalar score reaches a threshold fitted on shadow data.

    Parameters
    ----------
    reduce : "mean", "max", int, str or a list of them, default "mean"
        How the feature vector becomes one scalar: its mean, its maximum, one column, named by its index or (when
        fitted on a table with column names) by its name, or the mean of several such columns.
    standardize : bool, default True
        Orient and scale every column on the fitting data before reducing: subtract its mean, divide by its standard
        deviation, and flip its sign where the fitting members score lower than the non-members (column AUC < 0.5).
        Features differ in scale (the demo's L2 columns spread six times wider than its others) and not all point
        the member's way (a spread over generations often falls for members); without this the mean is the
        widest column's, whatever its direction. ``False``: the raw columns (the earlier behaviour).

    Attributes
    ----------
    threshold_ : float
        Members are the samples whose scalar score is >= ``threshold_``. It lies midway between the lowest
        shadow score still called a member at the best Youden point and the next lower shadow score.
    youden_j_ : float
        TPR - FPR on the fitting data at that threshold.
    columns_ : tuple of int or None
        The columns used, when ``reduce`` names them.
    center_, scale_, sign_ : ndarray of shape (n_features,)
        Each column's fitting mean, standard deviation (1 where it is constant) and orientation (+1 or -1); 0, 1 and
        +1 without ``standardize``. The scalar is the reduction of ``sign_ * (X - center_) / scale_``.
    """

    def __init__(self, reduce: str | int | list[str | int] = "mean", standardize: bool = True) -> None:
        self.reduce = reduce
        self.standardize = standardize

    def _resolve_columns(self) -> tuple[int, ...] | None:
        reduce = self.reduce
        if isinstance(reduce, str) and reduce in REDUCTIONS:
            return None
        if isinstance(reduce, (list, tuple)) and reduce:
            return tuple(self._resolve_column(r) for r in reduce)
        return (self._resolve_column(reduce),)

    def _resolve_column(self, reduce: Any) -> int:
        if isinstance(reduce, (int, np.integer)) and not isinstance(reduce, bool):
            if not 0 <= reduce < self.n_features_in_:
                raise ConfigError(f"reduce={reduce} is not a column index: the data has {self.n_features_in_} features")
            return int(reduce)
        if isinstance(reduce, str) and reduce not in REDUCTIONS:
            names = list(getattr(self, "feature_names_in_", []))
            if reduce in names:
                return names.index(reduce)
            known = f"; the columns are {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}" if names else ""
            raise ConfigError(f"reduce={reduce!r} is neither one of {', '.join(REDUCTIONS)} nor a column name{known}")
        raise ConfigError(
            f"reduce must be one of {', '.join(REDUCTIONS)}, a column index or name, or a list of them; "
            f"got {self.reduce!r}"
        )

    def _orient(self, X: FloatArray, member: np.ndarray) -> None:
        d = X.shape[1]
        self.center_, self.scale_, self.sign_ = np.zeros(d), np.ones(d), np.ones(d)
        if not self.standardize:
            return
        self.center_ = X.mean(axis=0)
        spread = X.std(axis=0)
        self.scale_ = np.where(spread > 0, spread, 1.0)
        self.sign_ = np.where(column_aucs(X, member) < 0.5, -1.0, 1.0)

    def _scalar(self, X: FloatArray) -> FloatArray:
        X = self.sign_ * (X - self.center_) / self.scale_
        if self.columns_ is not None:
            scalar: FloatArray = X[:, list(self.columns_)].mean(axis=1)
        else:
            scalar = X.max(axis=1) if self.reduce == "max" else X.mean(axis=1)
        return scalar

    def fit(self, X: Any, y: Any) -> ThresholdAttack:
        X, member = self._validate_fit(X, y)
        self.columns_ = self._resolve_columns()
        self._orient(X, member)
        roc = roc_curve(self._scalar(X), member)
        j = roc.tpr - roc.fpr
        best = int(np.argmax(j))  # first maximum: the strictest threshold among equally good ones
        t = roc.thresholds
        if best == 0:  # nobody a member: just above the highest score
            self.threshold_ = float(np.nextafter(t[1], np.inf))
        elif best == t.size - 1:  # everybody a member: the lowest score
            self.threshold_ = float(t[best])
        else:
            self.threshold_ = float((t[best] + t[best + 1]) / 2)
        self.youden_j_ = float(j[best])
        return self

    def decision_function(self, X: Any) -> FloatArray:
        """Scalar score minus the fitted threshold: >= 0 means member."""
        X = self._validate_score(X)
        return self._scalar(X) - self.threshold_
