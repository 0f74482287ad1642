"""Classifier attack: a standardised MLP (or any scikit-learn classifier) on the feature vector."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit, logit
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state

from diffmia.attacks._base import MembershipAttack
from diffmia.errors import ConfigError
from diffmia.records import FloatArray


def _shuffled(n: int, rng: np.random.RandomState) -> np.ndarray:
    order = np.arange(n)
    rng.shuffle(order)
    return order


class MLP:
    """A binary multi-layer perceptron (ReLU hidden layers, a logistic output) trained with Adam, one epoch per
    :meth:`epoch` call.

    The arithmetic is scikit-learn's ``MLPClassifier(solver="adam")`` fitted by ``partial_fit`` once per epoch,
    step for step (Glorot-uniform initialisation, the shuffle drawn from ``random_state`` afresh at each call, the L2
    penalty in the gradient, Adam's bias correction), so a fit gives the weights that loop gives; it runs without
    that loop's per-call input checks, which cost several times the arithmetic on shadow-sized data.
    """

    def __init__(
        self,
        n_features: int,
        hidden_layer_sizes: Sequence[int],
        *,
        alpha: float,
        learning_rate_init: float,
        batch_size: int,
        random_state: Any,
    ) -> None:
        self.alpha, self.learning_rate_init, self.batch_size = alpha, learning_rate_init, batch_size
        self.random_state = random_state
        units = [n_features, *hidden_layer_sizes, 1]
        rng = check_random_state(random_state)
        self.coefs_: list[FloatArray] = []
        self.intercepts_: list[FloatArray] = []
        for fan_in, fan_out in itertools.pairwise(units):
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            self.coefs_.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
            self.intercepts_.append(rng.uniform(-bound, bound, fan_out))
        self._init_rng, self._fresh = rng, isinstance(random_state, int | np.integer)
        self._later: dict[int, np.ndarray] = {}
        self._epochs = 0
        params = self.coefs_ + self.intercepts_
        self._moments = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
        self._steps = 0

    def epoch(self, X: FloatArray, member: np.ndarray) -> bool:
        """One pass over ``X`` in shuffled minibatches; False when a weight is no longer finite."""
        n = X.shape[0]
        if self._epochs == 0:  # the first shuffle continues the initialisation's stream
            order = _shuffled(n, self._init_rng)
        elif not self._fresh:
            order = _shuffled(n, check_random_state(self.random_state))
        else:  # an integer seed is a fresh generator at every later epoch, hence always one order: drawn once
            if n not in self._later:
                self._later[n] = _shuffled(n, check_random_state(self.random_state))
            order = self._later[n]
        self._epochs += 1
        y = member.reshape(-1, 1)
        batch = int(np.clip(self.batch_size, 1, n))
        last = len(self.coefs_) - 1
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            activations = [X[rows]]
            for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_, strict=True)):
                z = activations[-1] @ W
                z += b
                activations.append(np.maximum(z, 0, out=z) if i < last else expit(z, out=z))
            delta = activations[-1] - y[rows]
            coef_grads, intercept_grads = [np.empty(0)] * (last + 1), [np.empty(0)] * (last + 1)
            for i in range(last, -1, -1):
                grad = activations[i].T @ delta
                grad += self.alpha * self.coefs_[i]
                grad /= len(rows)
                coef_grads[i], intercept_grads[i] = grad, np.sum(delta, axis=0) / len(rows)
                if i:
                    delta = delta @ self.coefs_[i].T
                    delta[activations[i] == 0] = 0
            self._adam(coef_grads + intercept_grads)
        return all(np.isfinite(p).all() for p in self.coefs_ + self.intercepts_)

    def _adam(self, grads: list[FloatArray]) -> None:
        beta_1, beta_2, epsilon = 0.9, 0.999, 1e-8  # scikit-learn's defaults
        self._steps += 1
        ms, vs = self._moments
        ms[:] = [beta_1 * m + (1 - beta_1) * g for m, g in zip(ms, grads, strict=True)]
        vs[:] = [beta_2 * v + (1 - beta_2) * (g**2) for v, g in zip(vs, grads, strict=True)]
        rate = self.learning_rate_init * np.sqrt(1 - beta_2**self._steps) / (1 - beta_1**self._steps)
        for param, m, v in zip(self.coefs_ + self.intercepts_, ms, vs, strict=True):
            param += -rate * m / (np.sqrt(v) + epsilon)

    def weights(self) -> tuple[list[FloatArray], list[FloatArray]]:
        return [w.copy() for w in self.coefs_], [b.copy() for b in self.intercepts_]

    def decision_function(self, X: FloatArray) -> FloatArray:
        """The member log-odds: the output before its sigmoid, without the saturation of predict_proba."""
        h = X
        for W, b in zip(self.coefs_[:-1], self.intercepts_[:-1], strict=True):
            h = np.maximum(h @ W + b, 0.0)
        out: FloatArray = (h @ self.coefs_[-1] + self.intercepts_[-1])[:, 0]
        return out

    def predict_proba(self, X: FloatArray) -> FloatArray:
        p = expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])


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
        mlp = MLP(
            X.shape[1],
            tuple(self.hidden_layer_sizes),
            alpha=self.alpha,
            learning_rate_init=self.learning_rate_init,
            batch_size=min(self.batch_size, len(X_train)),
            random_state=self.random_state,
        )
        member = y_train == 1
        best_loss, best_epoch = np.inf, 0
        best_weights: tuple[list[FloatArray], list[FloatArray]] = ([], [])
        self.validation_loss_ = []
        diverged = ConfigError(
            "the classifier attack's training diverged (no finite held-out loss): lower "
            "attacks.classifier.learning_rate_init or standardize the features"
        )
        for epoch in range(1, self.max_iter + 1):
            if not mlp.epoch(X_train, member):
                if best_epoch:
                    break  # keep the best finite epoch
                raise diverged
            loss = float(np.logaddexp(0.0, sign * mlp.decision_function(X_held)).mean())  # binary cross-entropy
            self.validation_loss_.append(loss)
            if loss < best_loss - 1e-6:  # never true for a NaN or infinite loss
                best_loss, best_epoch = loss, epoch
                best_weights = mlp.weights()
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
        if isinstance(self.model_, MLP):
            return self.model_.decision_function(Xs)
        if hasattr(self.model_, "decision_function"):
            return np.asarray(self.model_.decision_function(Xs), dtype=np.float64)
        p = np.clip(self.model_.predict_proba(Xs)[:, 1], 1e-15, 1 - 1e-15)
        return np.asarray(logit(p), dtype=np.float64)
