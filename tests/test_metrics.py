"""Metrics: hand-computed ROC cases, scikit-learn as reference, conservative TPR@FPR, bootstrap coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from diffmia.errors import DataError
from diffmia.metrics import (
    allowed_false_positives,
    balanced_accuracy,
    evaluate,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)


def test_roc_hand_computed_interleaved():
    roc = roc_curve([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(roc.tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(roc.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6])
    assert roc_auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)


def test_roc_ties_share_one_point():
    # a member and a non-member tied at 1, another pair tied at 0: the ROC can only step diagonally
    roc = roc_curve([1, 1, 0, 0], [1, 0, 1, 0])
    np.testing.assert_allclose(roc.fpr, [0, 0.5, 1])
    np.testing.assert_allclose(roc.tpr, [0, 0.5, 1])
    assert roc_auc([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    # one tie across classes in otherwise separated scores counts one half: (3 + 0.5) / 4
    assert roc_auc([3, 2, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.875)


def test_all_equal_scores():
    scores, labels = np.zeros(10), np.r_[np.ones(5), np.zeros(5)]
    assert roc_auc(scores, labels) == 0.5
    result = tpr_at_fpr(scores, labels, 0.5)
    # calling anyone a member calls everyone a member (FPR 1 > 0.5): the only admissible point is (0, 0)
    assert (result.tpr, result.achieved_fpr, result.threshold) == (0.0, 0.0, math.inf)


def test_perfect_and_inverted_separation():
    labels = np.r_[np.ones(100), np.zeros(100)]
    perfect = np.r_[np.linspace(1, 2, 100), np.linspace(-2, -1, 100)]
    assert roc_auc(perfect, labels) == 1.0
    r = tpr_at_fpr(perfect, labels, 0.01)
    assert (r.tpr, r.achieved_fpr, r.threshold) == (1.0, 0.0, 1.0)
    assert roc_auc(-perfect, labels) == 0.0
    r = tpr_at_fpr(-perfect, labels, 0.01)
    assert (r.tpr, r.achieved_fpr, r.threshold) == (0.0, 0.0, math.inf)  # TPR 0: the strictest point


def test_tpr_at_fpr_hand_computed():
    scores = [0.9, 0.7, 0.5, 0.8, 0.6, 0.4, 0.2]
    labels = [1, 1, 1, 0, 0, 0, 0]
    r = tpr_at_fpr(scores, labels, 0.25)  # one false positive allowed: threshold 0.7 calls 0.9, 0.8, 0.7
    assert (r.tpr, r.achieved_fpr, r.threshold) == (pytest.approx(2 / 3), 0.25, 0.7)
    r = tpr_at_fpr(scores, labels, 0.2)  # below 1/4 is not resolvable with 4 non-members
    assert math.isnan(r.tpr)
    assert "1/4" in r.reason


def test_tpr_at_fpr_tie_at_the_cut_is_not_split():
    # two non-members tie with a member at 0.8: including that member would cost FPR 0.5 > 0.25
    r = tpr_at_fpr([0.8, 0.5, 0.8, 0.8, 0.2, 0.1], [1, 1, 0, 0, 0, 0], 0.25)
    assert (r.tpr, r.achieved_fpr, r.threshold) == (0.0, 0.0, math.inf)
    r = tpr_at_fpr([0.8, 0.5, 0.8, 0.8, 0.2, 0.1], [1, 1, 0, 0, 0, 0], 0.5)
    assert (r.tpr, r.achieved_fpr, r.threshold) == (1.0, 0.5, 0.5)


def test_nan_below_resolvable_fpr_with_reason():
    labels = np.r_[np.ones(100), np.zeros(100)]
    scores = np.random.default_rng(0).standard_normal(200)
    r = tpr_at_fpr(scores, labels, 0.001)
    assert math.isnan(r.tpr) and math.isnan(r.achieved_fpr)
    assert "1/100" in r.reason
    assert not math.isnan(tpr_at_fpr(scores, labels, 0.01).tpr)


def test_allowed_false_positives_is_exact_in_float():
    # 0.29 * 100 is 28.999999999999996 in float; 29/100 <= 0.29 all the same
    assert allowed_false_positives(0.29, 100) == 29
    assert allowed_false_positives(0.01, 100) == 1
    assert allowed_false_positives(0.0099, 100) == 0
    assert allowed_false_positives(1.0, 7) == 7


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=60),
    target=st.floats(0.0, 1.0),
)
def test_tpr_at_fpr_never_exceeds_the_target_fpr_and_matches_the_roc(data, target):
    scores = np.array([s for s, _ in data], dtype=float)
    labels = np.array([m for _, m in data])
    if labels.all() or not labels.any():
        return
    r = tpr_at_fpr(scores, labels, target)
    n_neg = int((~labels).sum())
    if target < 1 / n_neg:
        assert math.isnan(r.tpr)
        return
    assert r.achieved_fpr <= target
    roc = roc_curve(scores, labels)
    assert r.tpr == roc.tpr[roc.fpr <= target].max()  # the brute-force conservative rule
    called = scores >= r.threshold
    assert called[~labels].mean() == r.achieved_fpr
    assert called[labels].mean() == r.tpr


@pytest.mark.parametrize("seed", range(20))
def test_auc_and_roc_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]
    scores = rng.integers(0, 20, n) if seed % 2 else rng.standard_normal(n)  # with and without ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    ours = roc_curve(scores, labels)
    np.testing.assert_allclose(ours.fpr, fpr)
    np.testing.assert_allclose(ours.tpr, tpr)
    np.testing.assert_allclose(ours.thresholds, thresholds)
    t = float(np.median(scores))
    assert balanced_accuracy(scores, labels, t) == pytest.approx(balanced_accuracy_score(labels, scores >= t))


def test_bootstrap_intervals_are_seeded_and_stratified():
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(60, bool), np.zeros(140, bool)]
    scores = rng.standard_normal(200) + labels
    a = evaluate(scores, labels, seed=7, threshold=0.5)
    b = evaluate(scores, labels, seed=7, threshold=0.5)
    c = evaluate(scores, labels, seed=8, threshold=0.5)
    assert a.to_dict() == b.to_dict()  # (NaN fields make the records themselves unequal)
    assert a.auc_interval != c.auc_interval
    assert (a.n_members, a.n_nonmembers) == (60, 140)
    assert a.auc_interval.low < a.auc < a.auc_interval.high
    tpr = a.at(0.01)
    assert tpr.interval.low <= tpr.tpr <= tpr.interval.high
    assert math.isnan(a.at(0.001).interval.low)  # not resolvable with 140 non-members
    assert a.balanced_accuracy_interval.low <= a.balanced_accuracy <= a.balanced_accuracy_interval.high


def test_bootstrap_auc_interval_covers_the_true_auc():
    """95% intervals of 200 seeded draws (N(1, 1) members, N(0, 1) non-members) cover the true AUC 88-99% of the time.

    Both bounds matter: too narrow an interval under-covers, and too wide a one (say, the full range of the
    resamples) covers every time.
    """
    true_auc = norm.cdf(1 / math.sqrt(2))
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        scores = np.r_[rng.normal(1, 1, 100), rng.normal(0, 1, 100)]
        labels = np.r_[np.ones(100), np.zeros(100)]
        ev = evaluate(scores, labels, fprs=(), n_bootstrap=1000, seed=seed)
        covered += ev.auc_interval.low <= true_auc <= ev.auc_interval.high
    assert 0.88 <= covered / 200 <= 0.99  # measured 0.955


def _hanley_mcneil_se(auc, n_pos, n_neg):
    """Standard error of the empirical AUC (Hanley & McNeil 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg))


@pytest.mark.parametrize("seed", range(4))
def test_bootstrap_interval_widths_match_the_analytic_standard_errors(seed):
    """A 95% interval is about 2 * 1.96 standard errors wide: neither a point nor the full range of the resamples.

    N(1, 1) members and N(0, 1) non-members, 300 of each. Analytic standard errors at the true values:
    Hanley-McNeil for the AUC; binomial for balanced accuracy at a fixed threshold t (mean of two independent
    proportions); for TPR at FPR f, the binomial TPR term plus the threshold's own sampling error, carried
    through the slope of the ROC curve (the density ratio of members to non-members at the cut).
    """
    n = 300
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = rng.standard_normal(2 * n) + labels
    fpr, t = 0.1, 0.5
    ev = evaluate(scores, labels, fprs=(fpr,), threshold=t, n_bootstrap=2000, seed=seed)

    auc_se = _hanley_mcneil_se(norm.cdf(1 / math.sqrt(2)), n, n)
    cut = norm.isf(fpr)  # the non-member quantile that the TPR@FPR threshold estimates
    tpr = norm.sf(cut - 1)
    tpr_se = math.sqrt(tpr * (1 - tpr) / n + (norm.pdf(cut - 1) / norm.pdf(cut)) ** 2 * fpr * (1 - fpr) / n)
    p_member, p_nonmember = norm.sf(t - 1), norm.cdf(t)  # P(member >= t), P(non-member < t)
    ba_se = 0.5 * math.sqrt(p_member * (1 - p_member) / n + p_nonmember * (1 - p_nonmember) / n)

    ratios = {
        "auc": (ev.auc_interval.high - ev.auc_interval.low) / (2 * 1.96 * auc_se),
        "tpr": (ev.at(fpr).interval.high - ev.at(fpr).interval.low) / (2 * 1.96 * tpr_se),
        "balanced accuracy": (ev.balanced_accuracy_interval.high - ev.balanced_accuracy_interval.low)
        / (2 * 1.96 * ba_se),
    }
    for name, ratio in ratios.items():
        assert 0.7 <= ratio <= 1.4, f"{name} interval is {ratio:.2f} x 2 * 1.96 SE"  # measured 0.83-1.19
    assert ev.auc_interval.low < ev.auc < ev.auc_interval.high
    assert ev.balanced_accuracy_interval.low <= ev.balanced_accuracy <= ev.balanced_accuracy_interval.high


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, np.nan, 0.3], [1, 0, 1], "NaN"),
        ([0.1, 0.2], [1, 1], "0 non-members"),
        ([0.1, 0.2], [0, 0], "0 members"),
        ([0.1, 0.2, 0.3], [1, 0], "3 scores but 2 labels"),
        ([0.1, 0.2], [1, 2], "0/1"),
        ([[0.1, 0.2]], [[1, 0]], "one-dimensional"),
    ],
)
def test_bad_inputs_name_the_problem(scores, labels, message):
    with pytest.raises(DataError, match=message):
        evaluate(scores, labels)
