"""Dataset-level membership inference: was this *set* of images in the training data?

Per-image scores are weak evidence one by one; together they can decide about a set. The test compares the k
candidates' scores with the scores of reference images known not to be members (the audit's non-members), by a
one-sided Mann-Whitney U test: under the null hypothesis the candidates are exchangeable with the references (none
was trained on), so every ranking of the pooled scores is equally likely. The test uses ranks only, so it needs no
calibration of the scores, and it is valid for any attack whose scores were fixed without the target's labels (the
audit fits its attacks on shadow models only). The statistic is reported as an AUC: the fraction of (candidate,
reference) pairs in which the candidate scores higher (ties count one half).

p-values come from :func:`scipy.stats.mannwhitneyu` (``method="auto"``: the exact distribution for small samples
without ties, else the normal approximation with tie and continuity corrections).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from diffmia.errors import DataError
from diffmia.records import BoolArray, FloatArray
from diffmia.results import load_run

METHOD = "one-sided Mann-Whitney U (candidates score higher than references)"


@dataclass(frozen=True)
class SetTestResult:
    """One set test: k candidates against n references."""

    k: int
    n_reference: int
    auc: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n_reference": self.n_reference, "auc": self.auc, "p_value": self.p_value}


def _finite(values: npt.ArrayLike, what: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise DataError(f"{what} must be a non-empty list of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{int(np.count_nonzero(~np.isfinite(array)))} {what} are NaN or infinite")
    return array


def set_test(candidate_scores: npt.ArrayLike, reference_scores: npt.ArrayLike) -> SetTestResult:
    """Test whether the candidates (as a set) score higher than the reference non-members."""
    from scipy.stats import mannwhitneyu

    candidates = _finite(candidate_scores, "candidate scores")
    references = _finite(reference_scores, "reference scores")
    result = mannwhitneyu(candidates, references, alternative="greater", method="auto")
    return SetTestResult(
        k=candidates.size,
        n_reference=references.size,
        auc=float(result.statistic) / (candidates.size * references.size),
        p_value=float(result.pvalue),
    )


@dataclass(frozen=True)
class SetTestCurve:
    """How the set test behaves with the set size k, from seeded repeats over a scored, labelled candidate pool.

    In every repeat, k members and k non-members are drawn without replacement; the other non-members are the
    references of both sets. ``member_p`` and ``nonmember_p`` hold the p-values, shape (len(ks), repeats).
    """

    ks: tuple[int, ...]
    repeats: int
    seed: int
    n_members: int
    n_nonmembers: int
    member_p: FloatArray
    nonmember_p: FloatArray

    def rows(self, alpha: float = 0.05, strict: float = 0.001) -> list[dict[str, Any]]:
        """Per k: median p of member sets, the share of member sets below ``strict``, and the share of
        non-member sets above ``alpha`` (the test's specificity at that level)."""
        return [
            {
                "k": k,
                "n_reference": self.n_nonmembers - k,
                "member_median_p": float(np.median(self.member_p[i])),
                f"member_share_p_below_{strict:g}": float(np.mean(self.member_p[i] < strict)),
                "nonmember_median_p": float(np.median(self.nonmember_p[i])),
                f"nonmember_share_p_above_{alpha:g}": float(np.mean(self.nonmember_p[i] > alpha)),
            }
            for i, k in enumerate(self.ks)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "ks": list(self.ks),
            "repeats": self.repeats,
            "seed": self.seed,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "rows": self.rows(),
        }


def set_test_curve(
    scores: npt.ArrayLike, labels: npt.ArrayLike, ks: Sequence[int], *, repeats: int = 200, seed: int = 0
) -> SetTestCurve:
    """Run :func:`set_test` on ``repeats`` random member sets and non-member sets of each size in ``ks``."""
    s = _finite(scores, "scores")
    y: BoolArray = np.asarray(labels, dtype=bool)
    if y.shape != s.shape:
        raise DataError(f"{s.size} scores but {y.size} labels")
    members, nonmembers = s[y], s[~y]
    problems = [f"k = {k}" for k in ks if not 1 <= k <= len(members) or k >= len(nonmembers)]
    if problems or not ks:
        raise DataError(
            f"set sizes must be between 1 and the number of members ({len(members)}) and below the number of "
            f"non-members ({len(nonmembers)}), which also serve as references; got {', '.join(problems) or 'none'}"
        )
    if repeats < 1:
        raise DataError(f"repeats must be at least 1, got {repeats}")
    rng = np.random.default_rng(seed)
    member_p = np.empty((len(ks), repeats))
    nonmember_p = np.empty((len(ks), repeats))
    for i, k in enumerate(ks):
        for r in range(repeats):
            drawn = rng.choice(len(members), size=k, replace=False)
            order = rng.permutation(len(nonmembers))
            null_set, references = nonmembers[order[:k]], nonmembers[order[k:]]
            member_p[i, r] = set_test(members[drawn], references).p_value
            nonmember_p[i, r] = set_test(null_set, references).p_value
    return SetTestCurve(tuple(ks), repeats, seed, len(members), len(nonmembers), member_p, nonmember_p)


@dataclass(frozen=True)
class RunScores:
    """The frozen scores of a run's target candidates under one (scenario, channel, attack)."""

    scenario: str
    channel: str
    attack: str
    sample_ids: tuple[str, ...]
    scores: FloatArray
    labels: BoolArray

    def subset(self, ids: Sequence[str]) -> FloatArray:
        index = {sample_id: i for i, sample_id in enumerate(self.sample_ids)}
        unknown = [i for i in ids if i not in index]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise DataError(f"{len(unknown)} candidate id(s) are not among the run's scored images: {shown}")
        return self.scores[[index[i] for i in ids]]


def load_run_scores(
    run_dir: str | Path, scenario: str | None = None, channel: str | None = None, attack: str | None = None
) -> RunScores:
    """The target's scores in a run directory; unset choices follow the run's recorded headline (its first
    scenario, and that scenario's headline channel and attack)."""
    run = load_run(run_dir)
    chosen_scenario = scenario or run.scenarios[0]
    default = run.headline.get(chosen_scenario, run.headline[run.scenarios[0]])
    chosen = (chosen_scenario, channel or default[0], attack or default[1])
    found = run.find(chosen[0], "target", chosen[1], chosen[2])
    if found is None:
        available = sorted({(s.scenario, s.channel, s.attack) for s in run.score_sets if s.model == "target"})
        raise DataError(
            f"{run_dir} has no target scores for scenario {chosen[0]}, channel {chosen[1]}, attack {chosen[2]}; "
            f"available: {'; '.join('/'.join(a) for a in available)}"
        )
    return RunScores(*chosen, sample_ids=found.sample_ids, scores=found.scores, labels=found.labels)


def read_candidates(candidates: str, scores: RunScores) -> list[str]:
    """The candidate ids: the run's ``members`` or ``nonmembers``, or a text file of ids (one per line; blank
    lines and repeats ignored)."""
    if candidates in ("members", "nonmembers"):
        wanted = scores.labels if candidates == "members" else ~scores.labels
        return [i for i, chosen in zip(scores.sample_ids, wanted, strict=True) if chosen]
    path = Path(candidates)
    if not path.is_file():
        raise DataError(f"--candidates {candidates!r} is neither 'members', 'nonmembers' nor a file of ids")
    lines = path.read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


@dataclass(frozen=True)
class SetTestReport:
    """What ``diffmia set-test`` answers of a run: which scores it read, and either the test of one candidate set
    (``test``, with how the candidates were given) or the curve over set sizes (``curve``)."""

    scenario: str
    channel: str
    attack: str
    candidates: str | None = None
    test: SetTestResult | None = None
    curve: SetTestCurve | None = None

    def to_dict(self) -> dict[str, Any]:
        """``set-test.json``: the scores read and the method, then the test's fields or the curve."""
        head = {"scenario": self.scenario, "channel": self.channel, "attack": self.attack, "method": METHOD}
        if self.test is not None:
            return {**head, "candidates": self.candidates, **self.test.to_dict()}
        return {**head, "curve": None if self.curve is None else self.curve.to_dict()}


def run_set_test(
    scores: RunScores, candidates: str | None, ks: Sequence[int] | None, *, repeats: int = 200, seed: int = 0
) -> SetTestReport:
    """``candidates`` against the run's non-members that are not candidates; without candidates, the curve of
    :func:`set_test_curve` over ``ks`` (default: 1, 2, 5, 10, 20, 50 where they fit)."""
    if candidates is not None:
        picked = read_candidates(candidates, scores)
        reference = ~scores.labels & ~np.isin(np.asarray(scores.sample_ids), picked)
        if not reference.any():
            raise DataError("no reference non-members are left once the candidates are set aside")
        tested = set_test(scores.subset(picked), scores.scores[reference])
        return SetTestReport(scores.scenario, scores.channel, scores.attack, candidates=candidates, test=tested)
    n_members, n_nonmembers = int(scores.labels.sum()), int((~scores.labels).sum())
    sizes = ks or [s for s in (1, 2, 5, 10, 20, 50) if s <= n_members and s < n_nonmembers]
    curve = set_test_curve(scores.scores, scores.labels, sizes, repeats=repeats, seed=seed)
    return SetTestReport(scores.scenario, scores.channel, scores.attack, curve=curve)
