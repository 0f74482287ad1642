"""Membership metrics for score arrays where a higher score means "more likely a member".

Every function validates its inputs and raises :class:`~diffmia.errors.DataError` naming the problem.
TPR at a target FPR follows the conservative rule (largest TPR among ROC points whose FPR does not exceed
the target) and always comes with the FPR actually achieved. Intervals come from a seeded, stratified
bootstrap: members and non-members are resampled separately, so every resample keeps the original counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from diffmia.errors import DataError
from diffmia.records import BoolArray, Evaluation, FloatArray, Interval, TprAtFpr

DEFAULT_FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class RocCurve:
    """ROC points from the strictest threshold (``inf``: nobody is a member) to the loosest."""

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


def check_scores(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
    """Validate a score vector and its membership labels; return them as float64 and bool arrays."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    problems = []
    if s.ndim != 1:
        problems.append(f"scores must be one-dimensional, got shape {s.shape}")
    if y.ndim != 1:
        problems.append(f"labels must be one-dimensional, got shape {y.shape}")
    if problems:
        raise DataError("; ".join(problems))
    if s.shape != y.shape:
        raise DataError(f"{s.size} scores but {y.size} labels")
    if s.size and not np.issubdtype(s.dtype, np.number):
        raise DataError(f"scores must be numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(s)))
    if n_bad:
        raise DataError(f"{n_bad} of {s.size} scores are NaN or infinite")
    if y.dtype != np.bool_:
        if y.size and not (np.issubdtype(y.dtype, np.number) and np.isin(y, (0, 1)).all()):
            bad = sorted({str(v) for v in np.unique(y) if v not in (0, 1)})[:5]
            raise DataError(f"labels must be 0/1 or booleans (1 = member); found {', '.join(bad)}")
        y = y.astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"need both members and non-members to evaluate, got {n_pos} members and {n_neg} non-members")
    return s, y


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> RocCurve:
    """The ROC curve with one point per distinct score (tied scores share one point, as they must)."""
    s, y = check_scores(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_each_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_each_value]
    fps = last_of_each_value + 1 - tps
    return RocCurve(
        fpr=np.r_[0.0, fps / (s.size - y.sum())],
        tpr=np.r_[0.0, tps / y.sum()],
        thresholds=np.r_[np.inf, s[last_of_each_value]],
    )


def _auc_rows(pos: FloatArray, neg: FloatArray) -> FloatArray:
    """AUC for each row of (resampled) member and non-member scores, by the Mann-Whitney rank formula."""
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # ties get their average rank
    rank_sum = ranks[:, :n_pos].sum(axis=1)
    return np.asarray((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), dtype=np.float64)


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve; ties count one half."""
    s, y = check_scores(scores, labels)
    return float(_auc_rows(s[y][None, :], s[~y][None, :])[0])


def column_aucs(X: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """The AUC of each column of ``X`` as a score (ties count one half), in one ranking pass."""
    x, y = np.asarray(X, dtype=np.float64), np.asarray(labels, dtype=bool)
    return _auc_rows(x[y].T, x[~y].T)


def allowed_false_positives(target_fpr: float, n_nonmembers: int) -> int:
    """The largest number k of false positives with k / n_nonmembers <= target_fpr (in float arithmetic)."""
    if not 0.0 <= target_fpr <= 1.0:
        raise DataError(f"target FPR must lie in [0, 1], got {target_fpr}")
    k = min(int(np.floor(target_fpr * n_nonmembers)), n_nonmembers)
    while k < n_nonmembers and (k + 1) / n_nonmembers <= target_fpr:
        k += 1
    while k > 0 and k / n_nonmembers > target_fpr:
        k -= 1
    return k


def _tpr_at_k_rows(pos: FloatArray, neg_desc: FloatArray, k: int) -> tuple[FloatArray, FloatArray]:
    """TPR per row when at most k non-members may be called members, and the cut value v of each row.

    v is the (k+1)-th largest non-member score: a threshold t admits at most k false positives iff t > v,
    so the best admissible TPR is #{member > v} / n_members -- exactly the conservative ROC rule.
    """
    n_neg = neg_desc.shape[1]
    v = neg_desc[:, k] if k < n_neg else np.full(neg_desc.shape[0], -np.inf)
    return (pos > v[:, None]).mean(axis=1), v


def _nan_interval(confidence: float) -> Interval:
    return Interval(float("nan"), float("nan"), confidence)


def tpr_at_fpr(scores: npt.ArrayLike, labels: npt.ArrayLike, target_fpr: float) -> TprAtFpr:
    """TPR at ``target_fpr`` by the conservative rule, with the achieved FPR and the threshold that gives it.

    Among thresholds reaching that TPR the strictest is reported, so the achieved FPR is the lowest one.

    NaN, with a reason, when ``target_fpr`` is below 1 / (number of non-members): such an FPR cannot be
    resolved with this many non-members.
    """
    s, y = check_scores(scores, labels)
    return _tpr_at_fpr_checked(s, y, target_fpr, _nan_interval(float("nan")))


def _tpr_at_fpr_checked(s: FloatArray, y: BoolArray, target_fpr: float, interval: Interval) -> TprAtFpr:
    n_neg = int((~y).sum())
    k = allowed_false_positives(target_fpr, n_neg)
    if k == 0 and target_fpr < 1.0:
        reason = (
            f"target FPR {target_fpr:g} is below 1/{n_neg} = {1 / n_neg:.3g}, the smallest FPR "
            f"that {n_neg} non-members can resolve"
        )
        return TprAtFpr(target_fpr, float("nan"), float("nan"), float("nan"), interval, reason)
    pos, neg = s[y], s[~y]
    tpr, v = _tpr_at_k_rows(pos[None, :], np.sort(neg)[::-1][None, :], k)
    # of the thresholds reaching that TPR, the strictest: it achieves the lowest FPR
    called = pos[pos > v[0]]
    threshold = float(called.min()) if called.size else float("inf")
    achieved_fpr = float((neg >= threshold).mean())
    return TprAtFpr(target_fpr, float(tpr[0]), achieved_fpr, threshold, interval)


def balanced_accuracy(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> float:
    """Mean of TPR and TNR when a sample is called a member iff its score >= ``threshold``."""
    s, y = check_scores(scores, labels)
    called = s >= threshold
    return float((called[y].mean() + (~called[~y]).mean()) / 2)


def _percentile_interval(values: FloatArray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(float(low), float(high), confidence)


def evaluate(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    threshold: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """AUC, TPR at each FPR in ``fprs`` and (given a threshold) balanced accuracy, with bootstrap intervals.

    The bootstrap is stratified (members and non-members resampled separately, counts kept) and seeded:
    the same inputs and seed give the same intervals. Percentile intervals at ``confidence``.
    """
    s, y = check_scores(scores, labels)
    if n_bootstrap < 1:
        raise DataError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    pos_b = pos[rng.integers(0, pos.size, size=(n_bootstrap, pos.size))]
    neg_b = neg[rng.integers(0, neg.size, size=(n_bootstrap, neg.size))]
    neg_b_desc = -np.sort(-neg_b, axis=1)

    auc = float(_auc_rows(pos[None, :], neg[None, :])[0])
    auc_interval = _percentile_interval(_auc_rows(pos_b, neg_b), confidence)

    records = []
    for target in fprs:
        k = allowed_false_positives(target, neg.size)
        interval = _nan_interval(confidence)
        if k > 0 or target >= 1.0:
            interval = _percentile_interval(_tpr_at_k_rows(pos_b, neg_b_desc, k)[0], confidence)
        records.append(_tpr_at_fpr_checked(s, y, target, interval))

    ba = ba_interval = None
    if threshold is not None:
        ba = balanced_accuracy(s, y, threshold)
        ba_rows = ((pos_b >= threshold).mean(axis=1) + (neg_b < threshold).mean(axis=1)) / 2
        ba_interval = _percentile_interval(ba_rows, confidence)

    return Evaluation(
        auc=auc,
        auc_interval=auc_interval,
        tpr_at_fpr=tuple(records),
        n_members=int(pos.size),
        n_nonmembers=int(neg.size),
        n_bootstrap=n_bootstrap,
        seed=seed,
        balanced_accuracy=ba,
        balanced_accuracy_interval=ba_interval,
        threshold=threshold,
    )
