"""Distribution attack: class-conditional Gaussians fitted on shadow data, scored by log-likelihood ratio."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from sklearn.covariance import ledoit_wolf

from diffmia.attacks._base import MembershipAttack
from diffmia.errors import ConfigError
from diffmia.records import FloatArray

COVARIANCES = ("scalar", "diagonal", "full")


class DistributionAttack(MembershipAttack):
    """Fit one Gaussian to the member features and one to the non-member features (LiRA-style).

    The score of a sample is the log-likelihood ratio log p(x | member) - log p(x | non-member); it is >= 0
    where the member Gaussian explains the sample at least as well (equal priors: the target's share of
    members is unknown to the attacker).

    Parameters
    ----------
    covariance : {"scalar", "diagonal", "full"}, default "diagonal"
        "scalar": one variance per class shared by all features (sigma^2 I); "diagonal": one variance per
        feature and class; "full": a full covariance per class, shrunk by Ledoit-Wolf so that it stays well
        conditioned with fewer samples than features (100 samples x 768 features is fine).
    tied : bool, default False
        Share one covariance between the classes (pooled within-class), like LDA: fewer parameters, steadier
        with small shadow sets; only the means then differ.
    var_floor : float, default 1e-6
        Variances are floored at ``var_floor`` times the mean feature variance, so a constant feature
        cannot produce an infinite score.

    Attributes
    ----------
    means_ : ndarray of shape (2, n_features)
        Non-member (row 0) and member (row 1) means.
    variances_ : ndarray of shape (2, n_features)
        Per-feature variances ("scalar": the same value repeated). Not set for "full".
    covariances_ : ndarray of shape (2, n_features, n_features)
        Shrunk covariances, "full" only.
    shrinkage_ : ndarray of shape (2,)
        Ledoit-Wolf shrinkage of each class, "full" only.
    """

    def __init__(self, covariance: str = "diagonal", tied: bool = False, var_floor: float = 1e-6) -> None:
        self.covariance = covariance
        self.tied = tied
        self.var_floor = var_floor

    def fit(self, X: Any, y: Any) -> DistributionAttack:
        if self.covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {', '.join(COVARIANCES)}; got {self.covariance!r}")
        if not self.var_floor > 0:
            raise ConfigError(f"var_floor must be positive; got {self.var_floor!r}")
        X, member = self._validate_fit(X, y)
        groups = [X[~member], X[member]]
        for label, rows in zip(self.classes_, groups, strict=True):
            if rows.shape[0] < 2:
                raise ConfigError(f"need at least two samples of class {label!r} to fit a distribution")
        self.means_ = np.stack([g.mean(axis=0) for g in groups])
        centred = [g - m for g, m in zip(groups, self.means_, strict=True)]
        if self.covariance == "full":
            self._fit_full(centred)
        else:
            self._fit_diagonal(centred)
        return self

    def _fit_diagonal(self, centred: list[FloatArray]) -> None:
        if self.tied:
            pooled = np.concatenate(centred)
            variances = np.stack([(pooled**2).mean(axis=0)] * 2)
        else:
            variances = np.stack([(c**2).mean(axis=0) for c in centred])
        scale = variances.mean()
        floor = self.var_floor * (scale if scale > 0 else 1.0)
        if self.covariance == "scalar":
            variances = np.repeat(variances.mean(axis=1, keepdims=True), variances.shape[1], axis=1)
        self.variances_ = np.maximum(variances, floor)

    def _fit_full(self, centred: list[FloatArray]) -> None:
        if self.tied:
            cov, shrinkage = ledoit_wolf(np.concatenate(centred), assume_centered=True)
            covariances, shrinkages = [cov, cov], [shrinkage, shrinkage]
        else:
            fitted = [ledoit_wolf(c, assume_centered=True) for c in centred]
            covariances, shrinkages = [f[0] for f in fitted], [f[1] for f in fitted]
        scale = float(np.mean([np.trace(c) for c in covariances])) / covariances[0].shape[0]
        floor = self.var_floor * (scale if scale > 0 else 1.0)
        self.covariances_ = np.stack(covariances) + floor * np.eye(covariances[0].shape[0])
        self.shrinkage_ = np.asarray(shrinkages, dtype=np.float64)
        self._cholesky = [cho_factor(c, lower=True) for c in self.covariances_]

    def _log_likelihood(self, X: FloatArray, k: int) -> FloatArray:
        diff = X - self.means_[k]
        if self.covariance == "full":
            factor = self._cholesky[k]
            mahalanobis = np.einsum("ij,ji->i", diff, cho_solve(factor, diff.T))
            log_det = 2.0 * np.log(np.diag(factor[0])).sum()
        else:
            mahalanobis = (diff**2 / self.variances_[k]).sum(axis=1)
            log_det = np.log(self.variances_[k]).sum()
        result: FloatArray = -0.5 * (mahalanobis + log_det + X.shape[1] * np.log(2 * np.pi))
        return result

    def decision_function(self, X: Any) -> FloatArray:
        """Log-likelihood ratio, member over non-member: >= 0 means member."""
        X = self._validate_score(X)
        return self._log_likelihood(X, 1) - self._log_likelihood(X, 0)
