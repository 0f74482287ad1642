"""Classifier attack: a standardised MLP (or any scikit-learn classifier) on the feature vector."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, logit
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from diffmia.attacks._base import MembershipAttack
from diffmia.errors import ConfigError
from diffmia.records import FloatArray

_ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "logistic": expit,
}


def _mlp_logit(mlp: MLPClassifier, X: FloatArray) -> FloatArray:
    """The MLP's output before its sigmoid: the member log-odds, without the saturation of predict_proba."""
    hidden = _ACTIVATIONS[mlp.activation]
    h = X
    for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1], strict=True):
        h = hidden(h @ W + b)
    out: FloatArray = (h @ mlp.coefs_[-1] + mlp.intercepts_[-1])[:, 0]
    return out


class ClassifierAttack(MembershipAttack):
    """Learn member vs non-member from shadow feature vectors with a classifier.

    By default: standardisation, then a multi-layer perceptron with an L2 penalty, trained epoch by epoch
    on the fitting (shadow) data with a stratified slice held out; training stops when the held-out
    log-loss has not improved for ``n_iter_no_change`` epochs, and the weights of the best epoch are kept.
    The number of epochs is thereby chosen on shadow data alone; the target is never looked at. (The
    held-out *loss*, unlike accuracy, keeps improving after a small held-out set is classified right.)

    Parameters
    ----------
    estimator : scikit-learn classifier or None, default None
        Used (cloned, fitted on all the fitting data) instead of the MLP when given; it should offer
        ``decision_function`` or ``predict_proba``. The MLP parameters below are then ignored.
    hidden_layer_sizes : tuple of int, default (256,)
    alpha : float, default 1e-2
        L2 penalty of the MLP.
    learning_rate_init : float, default 1e-3
        Adam's step size.
    batch_size : int, default 32
        Minibatch size of each Adam step.
    max_iter : int, default 500
        Upper bound on epochs.
    validation_fraction : float, default 0.2
        Share of the fitting data held out to choose the epoch.
    n_iter_no_change : int, default 20
        Epochs without a lower held-out loss before training stops.
    standardize : bool, default True
        Scale each feature to zero mean, unit variance (fitted on the fitting data) first.
    random_state : int or None, default 0
        Seed of the held-out split, the MLP's initialisation and its shuffling.

    Attributes
    ----------
    scaler_ : StandardScaler or None
    model_ : the fitted classifier (labels 0 = non-member, 1 = member), applied after ``scaler_``.
    n_iter_ : int or None
        The epoch whose weights were kept (None for a user estimator).
    validation_loss_ : list of float
        Held-out log-loss after each epoch (empty for a user estimator).
    """

    def __init__(
        self,
        estimator: Any = None,
        hidden_layer_sizes: tuple[int, ...] = (256,),
        alpha: float = 1e-2,
        learning_rate_init: float = 1e-3,
        batch_size: int = 32,
        max_iter: int = 500,
        validation_fraction: float = 0.2,
        n_iter_no_change: int = 20,
        standardize: bool = True,
        random_state: int | None = 0,
    ) -> None:
        self.estimator = estimator
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> ClassifierAttack:
        X, member = self._validate_fit(X, y)
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        Xs = self.scaler_.transform(X) if self.scaler_ is not None else X
        target = member.astype(int)
        if self.estimator is not None:
            if not (hasattr(self.estimator, "decision_function") or hasattr(self.estimator, "predict_proba")):
                raise ConfigError(
                    f"estimator {type(self.estimator).__name__} has neither decision_function nor predict_proba"
                )
            self.model_ = clone(self.estimator).fit(Xs, target)
            self.n_iter_: int | None = None
            self.validation_loss_: list[float] = []
        else:
            self._fit_mlp(Xs, target)
        return self

    def _fit_mlp(self, X: FloatArray, target: Any) -> None:
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must lie strictly between 0 and 1; got {self.validation_fraction}")
        if self.max_iter < 1 or self.n_iter_no_change < 1:
            raise ConfigError("max_iter and n_iter_no_change must be at least 1")
        X_train, X_held, y_train, y_held = train_test_split(
            X, target, test_size=self.validation_fraction, stratify=target, random_state=self.random_state
        )
        sign = np.where(y_held == 1, -1.0, 1.0)
        mlp = MLPClassifier(
            hidden_layer_sizes=tuple(self.hidden_layer_sizes),
            alpha=self.alpha,
            learning_rate_init=self.learning_rate_init,
            batch_size=min(self.batch_size, len(X_train)),
            random_state=self.random_state,
        )
        best_loss, best_epoch = np.inf, 0
        best_weights: tuple[list[FloatArray], list[FloatArray]] = ([], [])
        self.validation_loss_ = []
        diverged = ConfigError("the classifier attack's training diverged (no finite held-out loss): lower "
                               "attacks.classifier.learning_rate_init or standardize the features")  # fmt: skip
        for epoch in range(1, self.max_iter + 1):
            try:
                mlp.partial_fit(X_train, y_train, classes=[0, 1])
            except ValueError as exc:  # scikit-learn's "Solver produced non-finite parameter weights"
                if "non-finite" not in str(exc):
                    raise
                if best_epoch:
                    break  # keep the best finite epoch
                raise diverged from exc
            loss = float(np.logaddexp(0.0, sign * _mlp_logit(mlp, X_held)).mean())  # binary cross-entropy
            self.validation_loss_.append(loss)
            if loss < best_loss - 1e-6:  # never true for a NaN or infinite loss
                best_loss, best_epoch = loss, epoch
                best_weights = ([w.copy() for w in mlp.coefs_], [b.copy() for b in mlp.intercepts_])
            elif epoch - best_epoch >= self.n_iter_no_change:
                break
        if not best_epoch:
            raise diverged
        mlp.coefs_, mlp.intercepts_ = best_weights
        self.model_, self.n_iter_ = mlp, best_epoch

    def decision_function(self, X: Any) -> FloatArray:
        """Member log-odds (or the estimator's own decision function): >= 0 means member."""
        X = self._validate_score(X)
        Xs = self.scaler_.transform(X) if self.scaler_ is not None else X
        if isinstance(self.model_, MLPClassifier):
            return _mlp_logit(self.model_, Xs)
        if hasattr(self.model_, "decision_function"):
            return np.asarray(self.model_.decision_function(Xs), dtype=np.float64)
        p = np.clip(self.model_.predict_proba(Xs)[:, 1], 1e-15, 1 - 1e-15)
        return np.asarray(logit(p), dtype=np.float64)
