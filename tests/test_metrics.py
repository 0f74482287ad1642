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
    column_aucs,
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


@pytest.mark.slow
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


# --- cases found by mutation testing (docs/mutation.md): each pins a number or a message a slip would change ---------


def test_bootstrap_intervals_equal_a_bootstrap_drawn_by_hand():
    """The seeded resamples redrawn by hand (members first, then non-members) and scored by scikit-learn.

    Scores rounded to halves: ties across classes, and members and non-members (6 each) exactly on the threshold.
    """
    rng = np.random.default_rng(5)
    labels = np.r_[np.ones(30, bool), np.zeros(40, bool)]
    scores = np.round(2 * (rng.standard_normal(70) + labels)) / 2
    t, n_bootstrap = 0.5, 200
    ev = evaluate(scores, labels, fprs=(0.1, 1.0), threshold=t, n_bootstrap=n_bootstrap, confidence=0.9, seed=11)

    draw = np.random.default_rng(11)
    pos = scores[labels][draw.integers(0, 30, (n_bootstrap, 30))]
    neg = scores[~labels][draw.integers(0, 40, (n_bootstrap, 40))]
    y = np.r_[np.ones(30, bool), np.zeros(40, bool)]
    resamples = [np.r_[p, n] for p, n in zip(pos, neg, strict=True)]
    by_hand = {
        "auc": [roc_auc_score(y, s) for s in resamples],
        "tpr": [tpr_at_fpr(s, y, 0.1).tpr for s in resamples],
        "balanced accuracy": [balanced_accuracy_score(y, s >= t) for s in resamples],
    }
    intervals = {"auc": ev.auc_interval, "tpr": ev.at(0.1).interval, "balanced accuracy": ev.balanced_accuracy_interval}
    for name, values in by_hand.items():
        low, high = np.quantile(values, [0.05, 0.95])
        got = intervals[name]
        assert (got.low, got.high, got.confidence) == (pytest.approx(low), pytest.approx(high), 0.9), name
    assert (ev.at(1.0).tpr, ev.at(1.0).interval.low, ev.at(1.0).interval.high) == (1.0, 1.0, 1.0)
    assert (ev.n_bootstrap, ev.seed, ev.threshold, ev.n_members, ev.n_nonmembers) == (200, 11, 0.5, 30, 40)


def test_evaluate_defaults_and_records():
    scores, labels = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    ev = evaluate(scores, labels)
    assert (ev.n_bootstrap, ev.seed, ev.threshold) == (1000, 0, None)
    assert ev.balanced_accuracy is None and ev.balanced_accuracy_interval is None
    assert [r.target_fpr for r in ev.tpr_at_fpr] == [0.01, 0.001]
    # neither FPR is resolvable with 2 non-members: NaN intervals, still at the requested confidence
    assert all(math.isnan(r.interval.low) and r.interval.confidence == 0.95 for r in ev.tpr_at_fpr)
    assert evaluate(scores, labels, n_bootstrap=1).n_bootstrap == 1


def test_tpr_at_fpr_one_calls_everyone_a_member():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.1], [1, 0, 1, 0, 0]
    r = tpr_at_fpr(scores, labels, 1.0)
    # every member called at the strictest threshold doing so (0.7): one non-member of three is above it
    assert (r.tpr, r.achieved_fpr, r.threshold, r.reason) == (1.0, pytest.approx(1 / 3), 0.7, None)
    assert math.isnan(r.interval.low) and math.isnan(r.interval.high) and math.isnan(r.interval.confidence)


def test_unresolvable_fpr_reason_is_exact():
    r = tpr_at_fpr([0.9, 0.7, 0.5, 0.8, 0.6, 0.4, 0.2], [1, 1, 1, 0, 0, 0, 0], 0.2)
    assert r.reason == "target FPR 0.2 is below 1/4 = 0.25, the smallest FPR that 4 non-members can resolve"
    assert math.isnan(r.threshold)


def test_allowed_false_positives_rounds_down_a_product_that_rounds_up():
    # 0.8333333333333333 * 6 is 5.0 in float, yet 5/6 > 0.8333333333333333: only 4 false positives fit
    target = float(np.nextafter(5 / 6, 0))
    assert target * 6 == 5.0 and target < 5 / 6
    assert allowed_false_positives(target, 6) == 4
    assert allowed_false_positives(float(np.nextafter(0.9, 0)), 10) == 8  # likewise 9/10


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: allowed_false_positives(1.5, 10), r"target FPR must lie in \[0, 1\], got 1.5"),
        (lambda: allowed_false_positives(-0.1, 10), r"target FPR must lie in \[0, 1\], got -0.1"),
        (lambda: evaluate([1, 0], [1, 0], n_bootstrap=0), "n_bootstrap must be at least 1, got 0"),
        (lambda: evaluate([1, 0], [1, 0], confidence=0.0), "confidence must lie strictly between 0 and 1, got 0.0"),
        (lambda: evaluate([1, 0], [1, 0], confidence=1.0), "confidence must lie strictly between 0 and 1, got 1.0"),
        (lambda: evaluate([1, 0], [1, 0], confidence=1.5), "confidence must lie strictly between 0 and 1, got 1.5"),
        (lambda: roc_auc(["a", "b"], [1, 0]), "scores must be numbers, got dtype <U1"),
        (lambda: roc_auc([1, 2, 3, 4], [1, 2, 3, 0]), "found 2, 3$"),
        (lambda: roc_auc(np.arange(9), [1, 0, 2, 3, 4, 5, 6, 7, 8]), "found 2, 3, 4, 5, 6$"),  # the first five only
        (lambda: roc_auc([[1, 2]], [[1, 0]]), "^scores must be one-dimensional, got shape \\(1, 2\\); labels must be"),
    ],
)
def test_bad_arguments_name_the_problem_exactly(call, message):
    with pytest.raises(DataError, match=message):
        call()


def test_column_aucs_equal_scikit_learn_column_by_column():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    X = np.column_stack([rng.normal(size=60) + y, -rng.normal(size=60) - y, np.round(rng.normal(size=60)), np.ones(60)])
    np.testing.assert_allclose(column_aucs(X, y), [roc_auc_score(y, X[:, j]) for j in range(4)])
    assert column_aucs(X, y)[3] == 0.5  # a constant column: all ties
