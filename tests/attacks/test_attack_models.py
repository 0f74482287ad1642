"""Attack models: hand-computed cases, known signals against the Bayes AUC, scikit-learn's checks."""

from __future__ import annotations

import ast
import copy
import math
import re

import numpy as np
import pytest
from scipy.special import logit
from scipy.stats import multivariate_normal, norm
from sklearn.base import clone
from sklearn.covariance import ledoit_wolf
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression, RidgeClassifier
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from diffmia.attacks import (
    ClassifierAttack,
    DistributionAttack,
    ThresholdAttack,
    cross_validate,
    fit_and_score,
    shadow_folds,
)
from diffmia.errors import ConfigError, DataError
from diffmia.metrics import roc_auc, tpr_at_fpr
from diffmia.records import FeatureTable

ATTACKS = [
    ThresholdAttack(),
    ThresholdAttack(reduce="max"),
    ThresholdAttack(standardize=False),
    DistributionAttack(),
    DistributionAttack(covariance="scalar"),
    DistributionAttack(covariance="full"),
    DistributionAttack(covariance="full", tied=True),
    ClassifierAttack(),
]


def _expected_failures(estimator):
    if isinstance(estimator, ThresholdAttack) and not estimator.standardize:
        reason = (
            "the raw threshold attack learns no feature weights by design: it thresholds the mean (or max) of the "
            "features as they are, so it cannot reach the check's accuracy on arbitrary blobs whose classes differ "
            "in other directions (standardized, it orients each column, and passes)"
        )
        return {"check_classifiers_train": reason}
    return {}


@parametrize_with_checks(ATTACKS[:-1], expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.slow  # about 40 checks that each fit a small neural network: a minute on 2 cores
@parametrize_with_checks([ClassifierAttack()], expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks_of_the_classifier(estimator, check):
    check(estimator)


def _equicorrelated(d, bayes_delta, n, rng, rho=0.5):
    """n members and n non-members in d dimensions, unit variances, correlation rho between features.

    Members are shifted by c along the all-ones direction, c chosen so the Mahalanobis distance between
    the classes is ``bayes_delta``; the Bayes AUC is then Phi(bayes_delta / sqrt(2)). Correlated features
    are what per-patch similarity scores look like: one image-level factor shared by all patches.
    """
    c = bayes_delta / math.sqrt(d / (1 + (d - 1) * rho))

    def draw(shift):
        common = rng.standard_normal((n, 1)) * math.sqrt(rho)
        return common + rng.standard_normal((n, d)) * math.sqrt(1 - rho) + shift

    return np.vstack([draw(c), draw(0.0)]), np.r_[np.ones(n, int), np.zeros(n, int)]


SIGNAL_ATTACKS = {
    "threshold": ThresholdAttack(),
    "distribution-diagonal": DistributionAttack(),
    "distribution-scalar": DistributionAttack(covariance="scalar"),
    "distribution-full": DistributionAttack(covariance="full"),
    "classifier": ClassifierAttack(),
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "classifier" else n for n in SIGNAL_ATTACKS]
)  # the classifier fits 20 small neural networks per case: 5-20 s each
@pytest.mark.parametrize("d", [1, 16, 768])
def test_attacks_recover_a_known_signal(name, d):
    """100 per class to fit, a fresh 100 per class to score, 5 seeded repeats per separation.

    d = 1: the mean AUC is within 0.03 of the Bayes AUC. Any d: every repeat reaches AUC >= 0.9 wherever the
    Bayes AUC is >= 0.97.
    """
    for delta in (1.0, 2.0, 2.7, 3.3):
        bayes = norm.cdf(delta / math.sqrt(2))
        aucs = []
        for seed in range(5):
            rng = np.random.default_rng([d, int(delta * 10), seed])
            X_fit, y_fit = _equicorrelated(d, delta, 100, rng)
            X_new, y_new = _equicorrelated(d, delta, 100, rng)
            attack = SIGNAL_ATTACKS[name].fit(X_fit, y_fit)
            aucs.append(roc_auc(attack.decision_function(X_new), y_new))
        if d == 1:
            assert abs(np.mean(aucs) - bayes) <= 0.03, (delta, bayes, aucs)
        if bayes >= 0.97:
            assert min(aucs) >= 0.9, (delta, bayes, aucs)


def test_threshold_is_youden_midpoint():
    X = np.array([[0.0], [1.0], [2.0], [3.0], [2.5]])
    y = np.array([0, 0, 1, 1, 0])
    attack = ThresholdAttack(standardize=False).fit(X, y)
    # scores 3 | 2.5 | 2 | 1 | 0: calling {3, 2.5, 2} members gives TPR 1, FPR 1/3: J = 2/3, the best
    assert attack.threshold_ == pytest.approx(1.5)
    assert attack.youden_j_ == pytest.approx(2 / 3)
    np.testing.assert_allclose(attack.decision_function([[1.5], [4.0]]), [0.0, 2.5])
    np.testing.assert_array_equal(attack.predict([[1.5], [1.4]]), [1, 0])


def test_threshold_reductions_and_columns():
    X = np.array([[0.0, 5.0], [1.0, 0.0], [2.0, 1.0], [3.0, 2.0]])
    y = np.array([0, 0, 1, 1])
    raw = ThresholdAttack(reduce=0, standardize=False)
    np.testing.assert_allclose(raw.fit(X, y).decision_function(X), [-1.5, -0.5, 0.5, 1.5])
    # maxima 5, 1, 2, 3: the best cut calls {5, 3, 2} members (TPR 1, FPR 1/2), midway between 2 and 1
    assert ThresholdAttack(reduce="max", standardize=False).fit(X, y).threshold_ == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="column index"):
        ThresholdAttack(reduce=2).fit(X, y)
    with pytest.raises(ConfigError, match="neither"):
        ThresholdAttack(reduce="deit/cosine").fit(X, y)


def test_distribution_llr_hand_computed():
    # non-members {0, 2}: mean 1, variance 1; members {4, 6}: mean 5, variance 1
    X, y = np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])
    for covariance in ("scalar", "diagonal", "full"):
        attack = DistributionAttack(covariance=covariance).fit(X, y)
        # log N(5; 5, 1) - log N(5; 1, 1) = 16 / 2; at 3 the two densities are equal
        np.testing.assert_allclose(attack.decision_function([[5.0], [3.0]]), [8.0, 0.0], atol=1e-4)


def test_distribution_full_is_stable_with_more_features_than_samples():
    rng = np.random.default_rng(0)
    X, y = _equicorrelated(768, 3.0, 100, rng)
    attack = DistributionAttack(covariance="full").fit(X, y)
    assert np.all(np.isfinite(attack.decision_function(X)))
    assert np.all((attack.shrinkage_ > 0) & (attack.shrinkage_ < 1))
    assert np.all(np.linalg.eigvalsh(attack.covariances_[0]) > 0)


def test_distribution_constant_feature_gives_finite_scores():
    X = np.c_[np.r_[np.zeros(5), np.ones(5)], np.full(10, 3.0)]
    y = np.r_[np.zeros(5), np.ones(5)]
    scores = DistributionAttack().fit(X, y).decision_function(X)
    assert np.all(np.isfinite(scores)) and np.all(scores[5:] > 0) and np.all(scores[:5] < 0)


def test_classifier_logit_matches_predict_proba_and_stops_early():
    rng = np.random.default_rng(1)
    X, y = _equicorrelated(16, 2.0, 100, rng)
    attack = ClassifierAttack(max_iter=300).fit(X, y)
    # stopped by the held-out slice of the fitting data, keeping the weights of its lowest loss
    assert attack.n_iter_ + 20 == len(attack.validation_loss_) < 300
    assert min(attack.validation_loss_) == attack.validation_loss_[attack.n_iter_ - 1]
    p = attack.model_.predict_proba(attack.scaler_.transform(X))[:, 1]
    moderate = (p > 1e-6) & (p < 1 - 1e-6)
    np.testing.assert_allclose(attack.decision_function(X)[moderate], logit(p[moderate]), rtol=1e-6, atol=1e-6)
    again = ClassifierAttack(max_iter=300).fit(X, y)
    np.testing.assert_array_equal(attack.decision_function(X), again.decision_function(X))  # seeded


def test_classifier_refuses_a_training_that_never_had_a_finite_held_out_loss(monkeypatch):
    """A diverged training (scikit-learn's non-finite weights, or a held-out loss that is NaN at every epoch) is
    a ConfigError that says what to change, never a model without weights; a divergence after a finite epoch keeps
    that epoch."""
    import diffmia.attacks.classifier as classifier

    rng = np.random.default_rng(2)
    X, y = _equicorrelated(4, 2.0, 40, rng)
    message = r"^the classifier attack's training diverged \(no finite held-out loss\): lower attacks\.classifier"
    with pytest.raises(ConfigError, match=message):  # weights overflow at the first step
        ClassifierAttack(standardize=False, learning_rate_init=1e10).fit(X * 1e307, y)
    finite = classifier.MLP.decision_function
    monkeypatch.setattr(classifier.MLP, "decision_function", lambda mlp, X: np.full(len(X), np.nan))
    with pytest.raises(ConfigError, match=message):
        ClassifierAttack(max_iter=50, n_iter_no_change=5).fit(X, y)
    calls = []
    monkeypatch.setattr(
        classifier.MLP,
        "decision_function",
        lambda mlp, X: calls.append(1) or (finite(mlp, X) * (1.0 if len(calls) <= 3 else np.nan)),
    )
    attack = ClassifierAttack(max_iter=50, n_iter_no_change=5).fit(X, y)
    assert attack.n_iter_ <= 3 and np.isnan(attack.validation_loss_[3:]).all() and len(attack.validation_loss_) <= 8


def test_classifier_accepts_any_scikit_learn_classifier():
    rng = np.random.default_rng(2)
    X, y = _equicorrelated(8, 2.0, 50, rng)
    attack = ClassifierAttack(estimator=LogisticRegression()).fit(X, y)
    np.testing.assert_allclose(
        attack.decision_function(X), attack.model_.decision_function(attack.scaler_.transform(X))
    )
    attack = ClassifierAttack(estimator=GaussianNB(), standardize=False).fit(X, y)  # no decision_function
    p = np.clip(attack.model_.predict_proba(X)[:, 1], 1e-15, 1 - 1e-15)
    np.testing.assert_allclose(attack.decision_function(X), logit(p))


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: repr(a))
def test_not_fitted_and_labels(attack):
    attack = clone(attack)  # the shared instance stays unfitted, however often the tests run in one process
    with pytest.raises(NotFittedError):
        attack.decision_function(np.zeros((2, 3)))
    X = np.r_[np.zeros((40, 2)), np.ones((40, 2))] + np.random.default_rng(0).normal(0, 0.1, (80, 2))
    labels = np.array(["in"] * 40 + ["out"] * 40)  # "out" > "in": the greater label is the member class
    fitted = attack.fit(X, labels)
    assert list(fitted.classes_) == ["in", "out"]
    np.testing.assert_array_equal(fitted.predict(X), labels)


def _table(ids, X, names, y=None):
    return FeatureTable(tuple(ids), np.asarray(X, float), tuple(names), None if y is None else np.asarray(y, bool))


def test_fit_and_score_matches_columns_by_name_and_ignores_target_labels():
    rng = np.random.default_rng(3)
    X, y = _equicorrelated(3, 2.0, 30, rng)
    X_t, y_t = _equicorrelated(3, 2.0, 30, rng)
    shadow = _table(range(60), X, ["a", "b", "c"], y)
    target = _table(range(60), X_t, ["a", "b", "c"], y_t)
    shuffled = _table(range(60), X_t[:, [2, 0, 1]], ["c", "a", "b"])  # other order, no labels
    attacks = {"threshold": ThresholdAttack(reduce="b", standardize=False), "distribution": DistributionAttack()}
    first = fit_and_score(attacks, shadow, target)
    second = fit_and_score(attacks, shadow, shuffled)
    for name in attacks:
        np.testing.assert_array_equal(first[name], second[name])
    np.testing.assert_allclose(
        first["threshold"], X_t[:, 1] - ThresholdAttack(reduce=1, standardize=False).fit(X, y).threshold_
    )
    assert not hasattr(attacks["distribution"], "means_")  # the caller's attacks stay unfitted


def test_fit_and_score_errors():
    shadow = _table(range(4), np.eye(4)[:, :2], ["a", "b"], [0, 0, 1, 1])
    with pytest.raises(DataError, match="the target lacks b; the shadow lacks z"):
        fit_and_score({"t": ThresholdAttack()}, shadow, _table(range(4), np.eye(4)[:, :2], ["a", "z"]))
    with pytest.raises(DataError, match="no membership labels"):
        fit_and_score({"t": ThresholdAttack()}, _table(range(4), np.eye(4)[:, :2], ["a", "b"]), shadow)
    with pytest.raises(ConfigError, match="not a feature column"):
        fit_and_score({"t": ThresholdAttack(reduce="q")}, shadow, shadow)


# --- cases found by mutation testing (docs/mutation.md) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("covariance", "tied", "non_member_var", "member_var"),
    [
        ("diagonal", False, [1.0, 4.0], [4.0, 4.0]),
        ("diagonal", True, [2.5, 4.0], [2.5, 4.0]),  # pooled: (1 + 1 + 4 + 4) / 4 and (4 + 4 + 4 + 4) / 4
        ("scalar", False, [2.5, 2.5], [4.0, 4.0]),  # the mean variance of each class
        ("scalar", True, [3.25, 3.25], [3.25, 3.25]),
    ],
)
def test_distribution_llr_hand_computed_with_unequal_variances(covariance, tied, non_member_var, member_var):
    # non-members (0, 0), (2, 4): mean (1, 2), variances (1, 4); members (3, 1), (7, 5): mean (5, 3), variances (4, 4)
    X, y = np.array([[0.0, 0.0], [2.0, 4.0], [3.0, 1.0], [7.0, 5.0]]), np.array([0, 0, 1, 1])
    attack = DistributionAttack(covariance=covariance, tied=tied).fit(X, y)
    np.testing.assert_array_equal(attack.means_, [[1.0, 2.0], [5.0, 3.0]])
    np.testing.assert_allclose(attack.variances_, [non_member_var, member_var])
    points = np.array([[5.0, 3.0], [1.0, 2.0], [3.0, 2.5], [-1.0, 7.0]])
    expected = norm.logpdf(points, [5.0, 3.0], np.sqrt(member_var)).sum(axis=1) - norm.logpdf(
        points, [1.0, 2.0], np.sqrt(non_member_var)
    ).sum(axis=1)
    np.testing.assert_allclose(attack.decision_function(points), expected, rtol=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_distribution_full_llr_equals_scipy_with_ledoit_wolf(tied):
    """Each class's covariance is Ledoit-Wolf's of its centred rows (pooled when tied), plus the variance floor."""
    rng = np.random.default_rng(4)
    non_members = rng.multivariate_normal([0, 0, 0], [[1, 0.5, 0], [0.5, 2, 0.3], [0, 0.3, 0.5]], size=12)
    members = rng.multivariate_normal([1, -1, 0.5], [[3, -1, 0], [-1, 1, 0], [0, 0, 0.2]], size=9)
    X, y = np.r_[non_members, members], np.r_[np.zeros(12), np.ones(9)]
    attack = DistributionAttack(covariance="full", tied=tied, var_floor=0.05).fit(X, y)
    centred = [non_members - non_members.mean(0), members - members.mean(0)]
    shrunk = (
        [ledoit_wolf(np.concatenate(centred), assume_centered=True)[0]] * 2
        if tied
        else [ledoit_wolf(c, assume_centered=True)[0] for c in centred]
    )
    floor = 0.05 * np.mean([np.trace(c) for c in shrunk]) / 3
    covariances = [c + floor * np.eye(3) for c in shrunk]
    np.testing.assert_allclose(attack.covariances_, covariances, rtol=1e-12)
    points = rng.normal(0, 2, (6, 3))
    expected = multivariate_normal(members.mean(0), covariances[1]).logpdf(points) - multivariate_normal(
        non_members.mean(0), covariances[0]
    ).logpdf(points)
    np.testing.assert_allclose(attack.decision_function(points), expected, rtol=1e-9)


def test_distribution_variance_floor_is_relative_to_the_mean_variance():
    # feature 1: variance 1 in each class; feature 2 constant: variance 0. Mean variance 0.5, floor 0.1 * 0.5
    X = np.c_[[0.0, 2.0, 4.0, 6.0], [3.0, 3.0, 3.0, 3.0]]
    y = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(DistributionAttack(var_floor=0.1).fit(X, y).variances_, [[1.0, 0.05], [1.0, 0.05]])
    full = DistributionAttack(covariance="full", var_floor=0.1).fit(X, y)
    # Ledoit-Wolf keeps the trace (1): the floor is 0.1 * 1 / 2 features, added to the diagonal
    shrunk = ledoit_wolf(np.c_[[-1.0, 1.0], [0.0, 0.0]], assume_centered=True)[0]
    np.testing.assert_allclose(full.covariances_, [shrunk + 0.05 * np.eye(2)] * 2, rtol=1e-12)
    # all features constant: the floor is var_floor itself
    constant = np.full((4, 2), 7.0)
    np.testing.assert_allclose(DistributionAttack(var_floor=0.1).fit(constant, y).variances_, 0.1)
    np.testing.assert_allclose(
        DistributionAttack(covariance="full", var_floor=0.1).fit(constant, y).covariances_, [0.1 * np.eye(2)] * 2
    )


def test_distribution_bad_settings_name_the_problem():
    X, y = np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])
    with pytest.raises(ConfigError, match=r"^covariance must be one of scalar, diagonal, full; got 'round'$"):
        DistributionAttack(covariance="round").fit(X, y)
    with pytest.raises(ConfigError, match=r"^var_floor must be positive; got 0$"):
        DistributionAttack(var_floor=0).fit(X, y)
    with pytest.raises(ConfigError, match=r"^need at least two samples of class \S+ to fit a distribution$"):
        DistributionAttack().fit(X[:3], y[:3])


def test_threshold_extreme_youden_points():
    # the top score is a member and all others are not: J = 1 at the first cut, midway between 3 and 2
    attack = ThresholdAttack(standardize=False).fit([[3.0], [2.0], [1.0]], [1, 0, 0])
    assert (attack.threshold_, attack.youden_j_) == (2.5, 1.0)
    # members score lower than non-members: no cut beats calling nobody a member, just above the highest score
    attack = ThresholdAttack(standardize=False).fit([[1.0], [2.0], [3.0], [4.0]], [1, 1, 0, 0])
    assert (attack.threshold_, attack.youden_j_) == (np.nextafter(4.0, np.inf), 0.0)
    np.testing.assert_array_equal(attack.predict([[4.0], [5.0]]), [0, 1])


def test_threshold_reduces_by_the_mean_by_default():
    X, y = np.array([[0.0, 2.0], [1.0, 0.0], [2.0, 3.0], [3.0, 4.0]]), np.array([0, 0, 1, 1])
    # means 1, 0.5, 2.5, 3.5: the members are the top two, the cut midway between 2.5 and 1 (by maxima: 3 and 2)
    attack = ThresholdAttack(standardize=False).fit(X, y)
    assert attack.threshold_ == 1.75
    np.testing.assert_allclose(attack.decision_function(X), [-0.75, -1.25, 0.75, 1.75])


def test_threshold_columns_named_by_a_table():
    import pyarrow as pa

    y = [0, 0, 1, 1]
    table = pa.table({"a": [0.0, 1.0, 2.0, 3.0], "b": [5.0, 0.0, 1.0, 2.0]})
    attack = ThresholdAttack(reduce="b", standardize=False).fit(table, y)
    assert (attack.columns_, attack.threshold_) == ((1,), 0.5)
    unknown = r"^reduce='c' is neither one of mean, max nor a column name"
    with pytest.raises(ConfigError, match=unknown + "; the columns are a, b$"):
        ThresholdAttack(reduce="c").fit(table, y)
    with pytest.raises(ConfigError, match=unknown + "$"):
        ThresholdAttack(reduce="c").fit(np.zeros((4, 2)), y)  # no names to list
    ten = pa.table({f"c{i}": [0.0, 1.0, 2.0, 3.0] for i in range(10)})
    with pytest.raises(ConfigError, match=r"the columns are c0, c1, c2, c3, c4, c5, c6, c7, c8, c9$"):
        ThresholdAttack(reduce="x").fit(ten, y)
    eleven = pa.table({f"c{i}": [0.0, 1.0, 2.0, 3.0] for i in range(11)})
    with pytest.raises(ConfigError, match=r"the columns are c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, \.\.\.$"):
        ThresholdAttack(reduce="x").fit(eleven, y)
    with pytest.raises(
        ConfigError, match=r"^reduce must be one of mean, max, a column index or name, or a list of them; got 1\.5$"
    ):
        ThresholdAttack(reduce=1.5).fit(np.zeros((4, 2)), y)


def test_threshold_orients_and_scales_each_column_on_the_fitting_data():
    """Columns of very different scales and opposite signs: the raw mean follows the large inverted column, the
    standardized one uses both."""
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], 200)
    loud = 100.0 * (rng.normal(size=400) - 0.5 * y)  # members lower, spread 100: AUC about 0.36
    quiet = 0.01 * (rng.normal(size=400) + 2.0 * y)  # members higher, spread 0.01: AUC about 0.92
    X = np.column_stack([loud, quiet])
    attack = ThresholdAttack().fit(X, y)
    np.testing.assert_allclose(attack.center_, X.mean(axis=0))
    np.testing.assert_allclose(attack.scale_, X.std(axis=0))
    np.testing.assert_array_equal(attack.sign_, [-1.0, 1.0])
    by_hand = ((X.mean(axis=0) - X) / X.std(axis=0))[:, 0] + ((X - X.mean(axis=0)) / X.std(axis=0))[:, 1]
    np.testing.assert_allclose(attack.decision_function(X), by_hand / 2 - attack.threshold_)
    raw = ThresholdAttack(standardize=False).fit(X, y)
    assert roc_auc(raw.decision_function(X), y) < 0.42  # the loud column's direction, reversed
    assert roc_auc(attack.decision_function(X), y) > 0.85  # both columns the member's way (about 0.89 in theory)
    # a single inverted column is flipped: its AUC becomes 1 - AUC; a constant column keeps scale 1
    one = ThresholdAttack(reduce=0).fit(X, y)
    assert roc_auc(one.decision_function(X), y) == pytest.approx(1 - roc_auc(loud, y))
    flat = ThresholdAttack().fit(np.column_stack([quiet, np.full(400, 7.0)]), y)
    assert (flat.scale_[1], flat.sign_[1]) == (1.0, 1.0)
    # standardize=False is the identity transform
    np.testing.assert_array_equal(np.c_[raw.center_, raw.scale_, raw.sign_], np.c_[np.zeros(2), np.ones(2), np.ones(2)])


def test_fit_and_score_with_default_and_indexed_threshold_attacks():
    X = np.array([[0.0, 2.0], [1.0, 0.0], [2.0, 3.0], [3.0, 4.0]])
    shadow = _table(range(4), X, ["a", "b"], [0, 0, 1, 1])
    raw = {"mean": ThresholdAttack(standardize=False), "a": ThresholdAttack(reduce=0, standardize=False)}
    scores = fit_and_score(raw, shadow, shadow)
    np.testing.assert_allclose(scores["mean"], [-0.75, -1.25, 0.75, 1.75])
    np.testing.assert_allclose(scores["a"], [-1.5, -0.5, 0.5, 1.5])


def test_threshold_on_several_columns_takes_their_mean():
    """``reduce`` as a list of columns (indices, or names resolved by fit_and_score): the mean of those columns."""
    X = np.array([[0.0, 9.0, 3.0], [1.0, 0.0, 0.0], [2.0, 0.0, 4.0], [3.0, 9.0, 1.0]])
    y = np.array([0, 0, 1, 1])
    # means 1.5, 0.5, 3, 2: the cut midway between 2 and 1.5
    attack = ThresholdAttack(reduce=[0, 2], standardize=False).fit(X, y)
    assert attack.columns_ == (0, 2) and attack.threshold_ == 1.75
    shadow = _table(range(4), X, ["a", "b", "c"], [0, 0, 1, 1])
    scores = fit_and_score({"t": ThresholdAttack(reduce=["a", "c"], standardize=False)}, shadow, shadow)["t"]
    np.testing.assert_allclose(scores, [-0.25, -1.25, 1.25, 0.25])
    with pytest.raises(ConfigError, match=r"^threshold attack: reduce='q' is not a feature column \(a, b, c\)$"):
        fit_and_score({"t": ThresholdAttack(reduce=["a", "q"])}, shadow, shadow)


def test_shadow_folds_split_each_class_evenly_or_follow_the_shadow_models():
    y = np.array([True] * 12 + [False] * 8)
    fold = shadow_folds(y, folds=4, seed=3)
    for k in range(4):  # 3 members and 2 non-members in every fold
        assert (fold[y] == k).sum() == 3 and (fold[~y] == k).sum() == 2
    np.testing.assert_array_equal(fold, shadow_folds(y, folds=4, seed=3))  # seeded
    assert not np.array_equal(fold, shadow_folds(y, folds=4, seed=4))
    groups = np.repeat([0, 1, 2, 3], 5)  # four shadow models: each is one fold, whatever `folds` says
    np.testing.assert_array_equal(shadow_folds(y, groups, folds=4), groups)
    np.testing.assert_array_equal(shadow_folds(y, np.zeros(20), folds=4, seed=3), fold)  # one model: stratified
    with pytest.raises(
        DataError,
        match=r"^cross-validation in 10 folds needs at least 10 shadow members and "
        r"non-members, got 12 and 8$",
    ):
        shadow_folds(y, folds=10)


def test_cross_validation_scores_each_row_by_the_attack_fitted_without_its_fold():
    rng = np.random.default_rng(5)
    y = np.repeat([1, 0], 100).astype(bool)
    X = np.column_stack([rng.normal(size=200) + 1.5 * y, rng.normal(size=200)])
    shadow = _table(range(200), X, ["a", "b"], y)
    attacks = {"raw": ThresholdAttack(reduce=0, standardize=False), "distribution": DistributionAttack()}
    checked = cross_validate(attacks, shadow, folds=5, seed=2, fpr=0.05)
    fold, by_hand = shadow_folds(y, folds=5, seed=2), np.empty(200)
    for k in range(5):
        fitted = ThresholdAttack(reduce=0, standardize=False).fit(X[fold != k], y[fold != k])
        by_hand[fold == k] = X[fold == k, 0] - fitted.threshold_
    raw = checked["raw"]
    assert (raw.auc, raw.tpr, raw.fpr, raw.folds) == (roc_auc(by_hand, y), tpr_at_fpr(by_hand, y, 0.05).tpr, 0.05, 5)
    assert 0.8 < raw.auc < 0.9  # Phi(1.5 / sqrt 2) = 0.856
    # leave-one-shadow-out: two models, two folds; a one-sided table is refused by name
    two = cross_validate(attacks, shadow, groups=np.arange(200) % 2)
    assert two["distribution"].folds == 2 and 0.75 < two["distribution"].auc < 0.9  # the noise column costs a little
    with pytest.raises(DataError, match="no membership labels"):
        cross_validate(attacks, _table(range(200), X, ["a", "b"]))


def test_fit_and_score_messages_are_exact():
    shadow = _table(range(4), np.eye(4)[:, :3], ["a", "b", "c"], [0, 0, 1, 1])
    with pytest.raises(DataError, match=r"^shadow and target feature columns differ: the target lacks b, c$"):
        fit_and_score({"t": ThresholdAttack()}, shadow, _table(range(4), np.eye(4)[:, :1], ["a"]))
    with pytest.raises(DataError, match=r"^shadow and target feature columns differ: the shadow lacks d, e$"):
        fit_and_score({"t": ThresholdAttack()}, shadow, _table(range(4), np.eye(5)[:4], [*"abcde"]))
    unlabelled = _table(range(4), np.eye(4)[:, :3], ["a", "b", "c"])
    with pytest.raises(DataError, match=r"^the shadow feature table has no membership labels; attacks are fitted"):
        fit_and_score({"t": ThresholdAttack()}, unlabelled, shadow)
    with pytest.raises(ConfigError, match=r"^threshold attack: reduce='q' is not a feature column \(a, b, c\)$"):
        fit_and_score({"t": ThresholdAttack(reduce="q")}, shadow, shadow)


def test_classifier_prefers_the_estimators_own_decision_function():
    rng = np.random.default_rng(5)
    X, y = _equicorrelated(4, 2.0, 30, rng)
    attack = ClassifierAttack(estimator=RidgeClassifier()).fit(X, y)  # a decision function and no probabilities
    np.testing.assert_allclose(
        attack.decision_function(X), attack.model_.decision_function(attack.scaler_.transform(X)), rtol=1e-12
    )


def test_classifier_clips_saturated_probabilities():
    X, y = np.array([[-2.0], [-1.0], [1.0], [2.0]]), np.array([0, 0, 1, 1])
    attack = ClassifierAttack(estimator=GaussianNB(), standardize=False).fit(X, y)
    far = np.array([[-100.0], [100.0]])
    assert list(attack.model_.predict_proba(far)[:, 1]) == [0.0, 1.0]  # saturated
    np.testing.assert_allclose(attack.decision_function(far), [logit(1e-15), logit(1 - 1e-15)], rtol=1e-12)


@pytest.mark.parametrize("attack", [ThresholdAttack(), DistributionAttack(), DistributionAttack(covariance="full")])
def test_float32_input_is_computed_in_float64(attack):
    X = np.array([[0.0, 0.1], [1.0, 0.3], [2.0, 0.7], [3.0, 0.9], [4.0, 1.1], [5.0, 1.3]], dtype=np.float32)
    y = np.array([0, 0, 0, 1, 1, 1])
    wide = X.astype(np.float64)  # the same numbers
    fitted, reference = clone(attack).fit(X, y), clone(attack).fit(wide, y)
    scores = fitted.decision_function(X)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, reference.decision_function(wide))


def test_classifier_settings_are_checked():
    X, y = _equicorrelated(2, 2.0, 20, np.random.default_rng(7))
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(
            ConfigError, match=rf"^validation_fraction must lie strictly between 0 and 1; got {fraction}$"
        ):
            ClassifierAttack(validation_fraction=fraction).fit(X, y)
    for max_iter, patience in ((0, 20), (20, 0)):
        with pytest.raises(ConfigError, match=r"^max_iter and n_iter_no_change must be at least 1$"):
            ClassifierAttack(max_iter=max_iter, n_iter_no_change=patience).fit(X, y)
    assert len(ClassifierAttack(max_iter=1, n_iter_no_change=1).fit(X, y).validation_loss_) == 1
    assert len(ClassifierAttack(max_iter=3, n_iter_no_change=100).fit(X, y).validation_loss_) == 3  # all epochs
    with pytest.raises(
        ConfigError, match=r"^estimator LinearRegression has neither decision_function nor predict_proba$"
    ):
        ClassifierAttack(estimator=LinearRegression()).fit(X, y)
    user = ClassifierAttack(estimator=LogisticRegression()).fit(X, y)
    assert (user.n_iter_, user.validation_loss_) == (None, [])


def test_classifier_stops_on_a_plateau():
    # steps of 1e-10 never lower the held-out loss by the required 1e-6: epoch 1 is the best, 3 more and it stops
    X, y = _equicorrelated(2, 2.0, 20, np.random.default_rng(8))
    attack = ClassifierAttack(learning_rate_init=1e-10, max_iter=50, n_iter_no_change=3).fit(X, y)
    assert (attack.n_iter_, len(attack.validation_loss_)) == (1, 4)


def test_classifier_logit_with_two_hidden_layers():
    X, y = _equicorrelated(3, 2.0, 30, np.random.default_rng(9))
    attack = ClassifierAttack(hidden_layer_sizes=(6, 4), max_iter=30).fit(X, y)
    p = attack.model_.predict_proba(attack.scaler_.transform(X))[:, 1]
    np.testing.assert_allclose(attack.decision_function(X), logit(p), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("labels", "which"), [([1, 1, 1, 1], "members"), ([0, 0, 0, 0], "non-members")])
def test_one_class_is_refused_naming_it(labels, which):
    with pytest.raises(
        DataError, match=rf"^DistributionAttack needs members and non-members to fit, .* only: {which} \(4"
    ):
        DistributionAttack().fit(np.eye(4), labels)


@pytest.mark.parametrize(
    ("n", "d", "hidden", "batch", "seed"),
    [(32, 60, (256,), 32, 0), (45, 7, (16, 8), 10, 3), (70, 30, (64,), 32, "stream")],
)
def test_mlp_epochs_are_scikit_learns_partial_fit_bit_for_bit(n, d, hidden, batch, seed):
    """diffmia's MLP is scikit-learn's MLPClassifier(solver="adam") fitted with one partial_fit per epoch, without
    that call's input checks: the same weights to the last bit, after every epoch (one and two hidden layers, a last
    minibatch smaller than the others, an integer seed or a random state whose stream runs on)."""
    from diffmia.attacks.classifier import MLP

    def state():
        return np.random.RandomState(4) if seed == "stream" else seed

    rng = np.random.default_rng(n)
    X, y = rng.normal(size=(n, d)), rng.random(n) < 0.5
    reference = MLPClassifier(
        hidden_layer_sizes=hidden, alpha=1e-2, learning_rate_init=1e-3, batch_size=batch, random_state=state()
    )
    ours = MLP(d, hidden, alpha=1e-2, learning_rate_init=1e-3, batch_size=batch, random_state=state())
    for _ in range(25):
        reference.partial_fit(X, y.astype(int), classes=[0, 1])
        assert ours.epoch(X, y)
        for mine, theirs in zip(ours.coefs_ + ours.intercepts_, reference.coefs_ + reference.intercepts_, strict=True):
            np.testing.assert_array_equal(mine, theirs)
    p = reference.predict_proba(X)[:, 1]
    np.testing.assert_allclose(ours.predict_proba(X)[:, 1], p, rtol=1e-12)
    moderate = (p > 1e-6) & (p < 1 - 1e-6)
    np.testing.assert_allclose(ours.decision_function(X)[moderate], logit(p[moderate]), rtol=1e-6, atol=1e-9)


def test_classifier_training_equals_a_loop_written_with_scikit_learn():
    """The MLP's epochs replayed by hand: scikit-learn's stratified held-out slice, one partial_fit per epoch, its
    log_loss of predict_proba on the held-out slice, a stop after n_iter_no_change epochs without a lower loss, and
    the weights of the best epoch kept."""
    X, y = _equicorrelated(3, 1.5, 40, np.random.default_rng(6))
    settings = {"hidden_layer_sizes": (5,), "alpha": 0.1, "learning_rate_init": 0.01, "batch_size": 16}
    attack = ClassifierAttack(**settings, max_iter=60, validation_fraction=0.3, n_iter_no_change=4, random_state=3)
    attack.fit(X, y)

    Xs = StandardScaler().fit_transform(X)
    X_train, X_held, y_train, y_held = train_test_split(Xs, y, test_size=0.3, stratify=y, random_state=3)
    mlp = MLPClassifier(**settings, random_state=3)
    losses, best_loss, best_epoch, best = [], np.inf, 0, None
    for epoch in range(1, 61):
        mlp.partial_fit(X_train, y_train, classes=[0, 1])
        losses.append(log_loss(y_held, mlp.predict_proba(X_held)))
        if losses[-1] < best_loss - 1e-6:
            best_loss, best_epoch, best = losses[-1], epoch, copy.deepcopy(mlp)
        elif epoch - best_epoch >= 4:
            break
    assert 4 < len(losses) < 60  # it stopped early, after some improvement
    np.testing.assert_allclose(attack.validation_loss_, losses, rtol=1e-9)
    assert attack.n_iter_ == best_epoch
    np.testing.assert_allclose(attack.decision_function(X), logit(best.predict_proba(Xs)[:, 1]), rtol=1e-6)


@pytest.mark.parametrize("attack_class", [ThresholdAttack, DistributionAttack, ClassifierAttack])
def test_defaults_are_the_documented_ones(attack_class):
    """Each ``name : type, default value`` line of the class docstring against ``get_params()`` of a bare instance."""
    documented = {
        name: ast.literal_eval(value)
        for name, value in re.findall(r"^    (\w+) : .*?, default (.+)$", attack_class.__doc__, flags=re.MULTILINE)
    }
    assert documented == attack_class().get_params()
