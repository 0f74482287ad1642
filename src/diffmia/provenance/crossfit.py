"""The owner's test: do a model's answers set the suspects apart from the references? A scoring model fitted on
those answers by cross-fitting, and a p-value made valid by permuting the whole procedure.

Given the features ``X`` of n images (one row each) and their labels (True: a suspect, possibly used; False: a
reference, certainly not used):

1. **folds**: each class is split at random into ``folds`` parts of near-equal size (stratified);
2. **fit and score**: for each fold, a linear score is fitted on the other folds (the difference of the two
   classes' means, each feature scaled by its pooled within-class variance: a diagonal linear discriminant, which
   needs no tuning and stays stable with few images per feature), and the held-out images are scored with it;
3. **statistic**: the AUC of the held-out suspects' scores against the held-out references' (Mann-Whitney, ties one
   half), over all folds together.

Under the null hypothesis (the suspects were not used: suspects and references are exchangeable draws of one kind
of image, which the model treats alike) every assignment of the labels to the images that keeps their counts is
equally likely. The whole procedure, folds included, is run again on ``permutations`` random relabellings, and
``p = (1 + #{statistic under a relabelling >= the observed one}) / (1 + permutations)``. This p-value is valid as
computed: P(p <= alpha) <= alpha under the null for every alpha, whatever the features, the fits or the dependence
between folds, because the observed labelling is one more exchangeable draw among the relabellings (ties count
against the owner). It can never be below ``1 / (1 + permutations)``; a p-value per fold is never combined as if
the folds were independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from diffmia.errors import DataError
from diffmia.records import BoolArray, FloatArray

MIN_PER_CLASS = 1  # images of each class per fold: each fold is scored on both, and fitted on the others
BATCH = 250  # relabellings scored together (memory: a few (BATCH, images) arrays)
RIDGE = 1e-9  # added to each feature's variance (the features are standardised first: negligible but for a feature
# constant within both classes, whose difference then weighs heavily but finitely)


@dataclass(frozen=True)
class CrossFitTest:
    """The test's outcome: the observed statistic (held-out AUC), its p-value and what made it, and each image's
    held-out score under the observed labels (higher: more like the suspects)."""

    statistic: float
    p_value: float
    permutations: int
    folds: int
    null: FloatArray  # the statistic under each relabelling
    scores: FloatArray  # each image's held-out score, in the order of the rows
    seed: int

    @property
    def min_p_value(self) -> float:
        """The smallest p-value a test with this many relabellings can give."""
        return 1.0 / (1 + self.permutations)


def stratified_folds(labels: BoolArray, folds: int, rng: np.random.Generator) -> npt.NDArray[np.int_]:
    """The fold of each image, for each row of ``labels`` (relabellings, (B, n); or one vector): each class dealt
    at random into ``folds`` parts of near-equal size."""
    single = np.ndim(labels) == 1
    labels = np.atleast_2d(labels)
    order = np.argsort(np.where(labels, 0.0, 1.0) + rng.random(labels.shape), axis=1)  # suspects first, shuffled
    k = labels.sum(axis=1, keepdims=True)
    place = np.arange(labels.shape[1])[None, :]
    dealt = np.where(place < k, place, place - k) % folds  # position within its class, dealt round
    fold = np.empty_like(order)
    np.put_along_axis(fold, order, dealt, axis=1)
    return fold[0] if single else fold


def discriminant(X: FloatArray, labels: BoolArray) -> tuple[FloatArray, FloatArray]:
    """(weights, centre) of the diagonal linear discriminant fitted on ``X``: ``score = (x - centre) @ weights``,
    the weights the difference of the class means over the pooled within-class variance (plus :data:`RIDGE`, so
    that a feature that does not vary within the classes keeps a finite weight), the centre the midpoint of the
    class means."""
    weights, centre = _fit(X, np.atleast_2d(labels), np.ones((1, len(X)), dtype=bool))
    return weights[0], centre[0]


def _fit(X: FloatArray, labels: BoolArray, train: BoolArray) -> tuple[FloatArray, FloatArray]:
    """:func:`discriminant` of each relabelling (row of ``labels``) on its ``train`` rows: (B, d) weights and
    centres, from sums over the rows (a few matrix products for all relabellings at once)."""
    pos, neg = (train & labels).astype(np.float64), (train & ~labels).astype(np.float64)
    n_pos, n_neg = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
    mean_pos, mean_neg = pos @ X / n_pos, neg @ X / n_neg
    scatter = (pos + neg) @ (X**2) - n_pos * mean_pos**2 - n_neg * mean_neg**2  # within-class sums of squares
    variance = np.maximum(scatter, 0.0) / np.maximum(n_pos + n_neg - 2, 1)
    return (mean_pos - mean_neg) / (variance + RIDGE), (mean_pos + mean_neg) / 2


def held_out_scores(X: FloatArray, labels: BoolArray, fold: npt.NDArray[np.int_]) -> FloatArray:
    """Each image's score by the discriminant fitted on the folds that do not hold it, for each relabelling (row
    of ``labels`` and ``fold``; one relabelling may be given as a vector)."""
    single = np.ndim(labels) == 1
    labels, fold = np.atleast_2d(labels), np.atleast_2d(fold)
    scores = np.empty(labels.shape)
    for k in range(int(fold.max()) + 1):
        held = fold == k
        weights, centre = _fit(X, labels, ~held)
        all_rows = X @ weights.T - (centre * weights).sum(axis=1)  # (n, B): every image under each fit
        scores[held] = all_rows.T[held]
    return scores[0] if single else scores


def held_out_aucs(scores: FloatArray, labels: BoolArray) -> FloatArray:
    """The AUC of each row's suspects against its references (Mann-Whitney, ties one half)."""
    ranks = rankdata(scores, axis=1)
    k, m = labels.sum(axis=1), (~labels).sum(axis=1)
    return np.asarray(((ranks * labels).sum(axis=1) - k * (k + 1) / 2) / (k * m), dtype=np.float64)


def crossfit_test(
    X: npt.ArrayLike, labels: npt.ArrayLike, *, folds: int = 5, permutations: int = 1000, seed: int = 0
) -> CrossFitTest:
    """Test whether the features set the suspects (``labels`` True) apart from the references: see the module.
    The observed labelling and its relabellings are scored together, a few hundred at a time."""
    x, y = _checked(X, labels, folds, permutations)
    spread = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)  # blind to the labels; for the discriminant's sake
    rng = np.random.default_rng([seed, 29])
    every = np.vstack([y, *(rng.permutation(y) for _ in range(permutations))])  # row 0: the observed labels
    statistics, scores = np.empty(len(every)), np.empty(len(y))
    for start in range(0, len(every), BATCH):
        batch = every[start : start + BATCH]
        held = held_out_scores(x, batch, stratified_folds(batch, folds, rng))
        statistics[start : start + len(batch)] = held_out_aucs(held, batch)
        if start == 0:
            scores = held[0]
    observed, null = float(statistics[0]), statistics[1:]
    p_value = (1 + int(np.count_nonzero(null >= observed))) / (1 + permutations)
    return CrossFitTest(observed, p_value, permutations, folds, null, scores, seed)


def _checked(X: npt.ArrayLike, labels: npt.ArrayLike, folds: int, permutations: int) -> tuple[FloatArray, BoolArray]:
    x = np.asarray(X, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or y.ndim != 1:
        raise DataError(f"the test needs one row of features per label, got features {x.shape} and labels {y.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{int(np.count_nonzero(~np.isfinite(x).all(axis=1)))} images have NaN or infinite features")
    if folds < 2 or permutations < 1:
        raise DataError(f"the test needs at least 2 folds and 1 relabelling, got {folds} and {permutations}")
    smallest = min(int(y.sum()), int((~y).sum()))
    if smallest < folds * MIN_PER_CLASS:
        raise DataError(
            f"{int(y.sum())} suspects and {int((~y).sum())} references: {folds} folds need at least "
            f"{folds * MIN_PER_CLASS} of each (every fold is scored on both kinds)"
        )
    return x, y
