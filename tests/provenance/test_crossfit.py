"""The cross-fitted permutation test: its pieces by hand, its p-value valid on exchangeable features (uniform under
the null) and powerful on shifted ones."""

from __future__ import annotations

import numpy as np
import pytest

from diffmia.errors import DataError
from diffmia.metrics import roc_auc
from diffmia.provenance.crossfit import crossfit_test, discriminant, held_out_aucs, held_out_scores, stratified_folds


def test_the_discriminant_by_hand():
    X = np.array([[1.0, 5.0, 0.1, 1.0], [4.0, 5.0, 0.2, 1.0], [0.0, 5.0, 0.0, 0.0], [2.0, 5.0, 0.1, 0.0]])
    y = np.array([True, True, False, False])
    weights, centre = discriminant(X, y)
    # column 0: means 2.5 and 1, within-class scatter 2.25 + 2.25 + 1 + 1 = 6.5 over 4 - 2: weight 1.5 / 3.25;
    # column 2: means 0.15 and 0.05, scatter 0.01 over 2: weight 0.1 / 0.005 = 20
    np.testing.assert_allclose(weights[[0, 2]], [1.5 / 3.25, 20.0], rtol=1e-6)  # the ridge: 1e-9 on each variance
    assert weights[1] == 0.0  # a constant column weighs nothing (no division by zero)
    assert weights[3] > 1e8  # constant within each class but not between: the ridge keeps it finite and positive
    np.testing.assert_allclose(centre, [1.75, 5.0, 0.1, 0.5])


def test_every_relabelling_of_a_batch_is_scored_as_it_would_be_alone():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(15, 3))
    batch = np.array([rng.permutation(np.r_[np.ones(6, bool), np.zeros(9, bool)]) for _ in range(7)])
    folds = stratified_folds(batch, 4, rng)
    assert folds.shape == (7, 15)
    scores = held_out_scores(X, batch, folds)
    aucs = held_out_aucs(scores, batch)
    for b in range(7):
        np.testing.assert_allclose(scores[b], held_out_scores(X, batch[b], folds[b]))
        assert aucs[b] == pytest.approx(roc_auc(scores[b], batch[b]))
        for cls in (True, False):  # each class dealt evenly into the 4 folds
            counts = np.bincount(folds[b][batch[b] == cls], minlength=4)
            assert counts.max() - counts.min() <= 1 and counts.sum() == (6 if cls else 9)


def test_every_image_is_scored_by_a_fit_on_the_folds_that_do_not_hold_it():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 3)), np.repeat([True, False], 10)
    fold = stratified_folds(y, 4, np.random.default_rng(2))
    assert sorted(np.bincount(fold[y])) == sorted(np.bincount(fold[~y])) == [2, 2, 3, 3]  # 10 per class in 4 folds
    scores = held_out_scores(X, y, fold)
    for i in range(20):
        weights, centre = discriminant(X[fold != fold[i]], y[fold != fold[i]])
        assert scores[i] == pytest.approx((X[i] - centre) @ weights)


def test_the_statistic_is_the_held_out_auc_and_p_counts_the_relabellings_at_least_as_extreme():
    rng = np.random.default_rng(3)
    y = np.repeat([True, False], 15)
    X = rng.normal(size=(30, 4)) + 0.8 * y[:, None]
    result = crossfit_test(X, y, folds=5, permutations=199, seed=4)
    assert (result.folds, result.seed, result.permutations) == (5, 4, 199)
    assert result.statistic == pytest.approx(roc_auc(result.scores, y))
    assert result.p_value == (1 + np.count_nonzero(result.null >= result.statistic)) / 200
    assert result.min_p_value == 1 / 200 and result.null.shape == (199,)
    again = crossfit_test(X, y, folds=5, permutations=199, seed=4)
    assert again.p_value == result.p_value and np.array_equal(again.null, result.null)  # seeded


def test_folds_are_dealt_at_random_within_each_class():
    """The folds are part of the procedure that is permuted: drawn anew for every relabelling, never by position."""
    y = np.repeat([True, False], 8)
    folds = stratified_folds(np.tile(y, (50, 1)), 4, np.random.default_rng(8))
    assert len({tuple(row) for row in folds}) > 40  # fifty draws of the same labels: (almost) all different
    assert all(len(set(folds[:, i])) == 4 for i in range(16))  # every image lands in every fold in some draw


def test_defaults_labels_as_integers_and_the_smallest_settings():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(24, 2)), np.repeat([1, 0], [10, 14])  # unequal sets, labels given as 0 / 1
    default = crossfit_test(X, y)
    assert (default.permutations, default.folds, default.seed) == (1000, 5, 0)
    again = crossfit_test(X, y.astype(bool), permutations=1000, folds=5, seed=0)
    assert default.p_value == again.p_value and default.statistic == pytest.approx(roc_auc(default.scores, y == 1))
    assert crossfit_test(X, y, folds=2, permutations=1).min_p_value == 0.5  # the smallest test allowed
    exactly = np.r_[np.ones(5, bool), np.zeros(19, bool)]  # one suspect in each of the 5 folds: enough
    assert crossfit_test(X, exactly, permutations=9).folds == 5


def test_features_far_from_zero_are_tested_as_exactly_as_centred_ones():
    """Sums of squares of a feature near 1e8 with unit spread would lose every digit: the test standardises the
    features first, so it gives the same answer as on the centred features."""
    rng = np.random.default_rng(7)
    y = np.repeat([True, False], 12)
    X = rng.normal(size=(24, 3)) + 0.9 * y[:, None]
    far = X + np.array([1e8, -3e7, 0.0])
    near, shifted = crossfit_test(X, y, permutations=99, seed=1), crossfit_test(far, y, permutations=99, seed=1)
    assert shifted.p_value == near.p_value and shifted.statistic == pytest.approx(near.statistic)


def test_separable_sets_reach_the_smallest_p_value_the_test_can_give():
    y = np.repeat([True, False], 10)
    X = np.column_stack([y * 10.0 + np.arange(20) * 0.01, np.zeros(20)])
    result = crossfit_test(X, y, folds=5, permutations=99)
    assert result.statistic == 1.0 and result.p_value == 0.01


@pytest.mark.slow
def test_the_p_value_is_uniform_on_exchangeable_features():
    """300 seeded null draws (20 + 20 images, 6 features of which two correlated, 99 relabellings each): the share of
    p-values at or below 0.05 / 0.1 / 0.5 stays within 3 binomial standard errors of the level, and not only on
    average: no value of p is favoured (a Kolmogorov distance to the uniform below 0.1)."""
    rng = np.random.default_rng(11)
    p = []
    for draw in range(300):
        base = rng.normal(size=(40, 6))
        base[:, 1] = base[:, 0] + 0.1 * base[:, 1]
        p.append(crossfit_test(base, rng.permutation(np.repeat([True, False], 20)), permutations=99, seed=draw).p_value)
    p = np.array(p)
    for alpha in (0.05, 0.1, 0.5):
        error = 3 * np.sqrt(alpha * (1 - alpha) / len(p))
        assert abs(np.mean(p <= alpha) - alpha) <= error, (alpha, np.mean(p <= alpha))
    grid = np.arange(1, 101) / 100
    assert np.max(np.abs([np.mean(p <= g) - g for g in grid])) < 0.1


def test_shifted_features_are_found():
    """A mean shift of 1 standard deviation in three features of eight, 25 + 25 images: p < 0.01 in 9 draws of 10."""
    rng = np.random.default_rng(12)
    found = 0
    for draw in range(10):
        y = np.repeat([True, False], 25)
        X = rng.normal(size=(50, 8))
        X[:, :3] += 1.0 * y[:, None]
        found += crossfit_test(X, y, permutations=199, seed=draw).p_value < 0.01
    assert found >= 9


def test_bad_input_is_named():
    y = np.repeat([True, False], 10)
    with pytest.raises(DataError, match="one row of features per label"):
        crossfit_test(np.zeros((19, 2)), y)
    with pytest.raises(DataError, match="2 images have NaN or infinite features"):
        crossfit_test(np.r_[np.zeros((18, 2)), [[np.nan, 0.0], [np.inf, np.nan]]], y)
    with pytest.raises(DataError, match=r"4 suspects and 16 references: 5 folds need at least 5 of each"):
        crossfit_test(np.zeros((20, 2)), np.r_[np.ones(4, bool), np.zeros(16, bool)])
    with pytest.raises(DataError, match=r"16 suspects and 4 references: 5 folds need at least 5 of each"):
        crossfit_test(np.zeros((20, 2)), np.r_[np.ones(16, bool), np.zeros(4, bool)])
    with pytest.raises(DataError, match="at least 2 folds and 1 relabelling"):
        crossfit_test(np.zeros((20, 2)), y, folds=1)
