"""What the report shows, in whatever format: table rows built from a :class:`~diffmia.results.RunResult` only.

``html.py`` and ``markdown.py`` format these rows; neither reads a result file itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffmia.records import Evaluation, ScoreSet
from diffmia.results import RunResult

MODEL_NAMES = {"target": "target", "base": "base model (control)", "blind": "blind (control)"}


def number(value: float | None, digits: int = 3) -> str:
    """A number to ``digits`` decimals; "n/a" where it is undefined."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def interval(evaluation: Evaluation) -> str:
    return f"[{number(evaluation.auc_interval.low)}, {number(evaluation.auc_interval.high)}]"


@dataclass(frozen=True)
class Cell:
    """A table cell: its value and a detail printed beneath it (the interval, the FPR achieved)."""

    value: str
    detail: str = ""


@dataclass(frozen=True)
class EvaluationRow:
    scenario: str
    model: str
    control: bool
    headline: bool
    channel: str
    attack: str
    auc: Cell
    tprs: tuple[Cell, ...]
    balanced_accuracy: str
    counts: str


def fprs(run: RunResult) -> list[float]:
    """The target FPRs every evaluation reports a TPR at (those of the first score set)."""
    return [t.target_fpr for t in run.score_sets[0].evaluation.tpr_at_fpr] if run.score_sets else []


def evaluation_row(score_set: ScoreSet, headline: bool, notes: dict[str, None] | None = None) -> EvaluationRow:
    """One row of an evaluation table; the reasons behind any n/a go into ``notes`` (each once)."""
    ev = score_set.evaluation
    tprs = []
    for t in ev.tpr_at_fpr:
        if math.isnan(t.tpr):
            if notes is not None:
                notes[t.reason or "undefined"] = None
            tprs.append(Cell("n/a"))
        else:
            tprs.append(
                Cell(
                    number(t.tpr),
                    f"FPR {number(t.achieved_fpr, 4)}; [{number(t.interval.low)}, {number(t.interval.high)}]",
                )
            )
    return EvaluationRow(
        score_set.scenario,
        MODEL_NAMES.get(score_set.model, score_set.model),
        score_set.model != "target",
        headline,
        score_set.channel,
        score_set.attack,
        Cell(number(ev.auc), interval(ev)),
        tuple(tprs),
        number(ev.balanced_accuracy),
        f"{ev.n_members} / {ev.n_nonmembers}",
    )


def evaluation_rows(run: RunResult) -> tuple[list[EvaluationRow], list[str]]:
    """Every (scenario, model, channel, attack) of the run, and the reasons behind any n/a."""
    notes: dict[str, None] = {}
    heads = {(s, "target", *key) for s, key in run.headline.items()}
    rows = [evaluation_row(s, (s.scenario, s.model, s.channel, s.attack) in heads, notes) for s in run.score_sets]
    return rows, list(notes)


def headline_rows(run: RunResult, scenario: str) -> list[EvaluationRow]:
    """A scenario's headline score set on the target, then its controls."""
    target = run.headline_set(scenario)
    if target is None:
        return []
    return [evaluation_row(target, True)] + [evaluation_row(s, False) for s in run.controls(scenario)]


def headline_choice(run: RunResult, scenario: str) -> str | None:
    """How a scenario's headline was chosen on the shadows, as a clause (None under the fixed rule)."""
    rows = run.headline_validation.get(scenario, [])
    chosen = [r for r in rows if (r.channel, r.attack) == tuple(run.headline.get(scenario, ()))]
    if not chosen:
        return None
    (row,) = chosen
    tpr = "not resolved" if row.tpr is None else number(row.tpr, 2)
    return (
        f"chosen on the shadows before the target was scored: out-of-fold TPR {tpr} at {row.fpr:.0%} FPR, "
        f"AUC {number(row.auc)}, the best of {len(rows)} candidates (all in result.json)"
    )


@dataclass(frozen=True)
class Candidate:
    """One candidate of a score set: its score and rank (1 = most likely a member), its truth, and the call at the
    shadow-fitted threshold (None where the evaluation has no threshold)."""

    sample_id: str
    score: float
    rank: int
    member: bool
    decision: bool | None

    @property
    def truth(self) -> str:
        return "member" if self.member else "non-member"

    @property
    def called(self) -> str:
        return "-" if self.decision is None else ("member" if self.decision else "non-member")


def candidates(score_set: ScoreSet) -> list[Candidate]:
    """Every candidate of ``score_set`` in id order, ranked by score (ties and undefined scores by id)."""
    ids = list(score_set.sample_ids)
    scores = [float(v) for v in score_set.scores]
    order = sorted(range(len(ids)), key=lambda i: (-scores[i] if not math.isnan(scores[i]) else math.inf, ids[i]))
    ranks = {i: r + 1 for r, i in enumerate(order)}
    threshold = score_set.evaluation.threshold
    rows = [
        Candidate(
            ids[i],
            scores[i],
            ranks[i],
            bool(score_set.labels[i]),
            None if threshold is None else bool(scores[i] >= threshold),
        )
        for i in range(len(ids))
    ]
    return sorted(rows, key=lambda c: c.sample_id)


def _scalar(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested mapping as (dotted key, text) pairs: lists of plain values joined by commas, lists of mappings by
    index (``key.0.name``)."""
    if isinstance(value, Mapping):
        if not value and prefix:
            return [(prefix, "(none)")]
        pairs: list[tuple[str, str]] = []
        for key, item in value.items():
            pairs += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(value, list | tuple):
        if not value:
            return [(prefix, "(none)")]
        if any(isinstance(v, Mapping | list | tuple) for v in value):
            return [pair for k, v in enumerate(value) for pair in flatten(v, f"{prefix}.{k}")]
        return [(prefix, ", ".join(_scalar(v) for v in value))]
    return [(prefix, _scalar(value))]


def environment(run: RunResult) -> list[tuple[str, str]]:
    """Seeds, generation settings, versions, the machine and the images requested, as (key, text) pairs."""
    return flatten(
        {
            "seeds": run.seeds,
            "generation": run.generation,
            "versions": run.versions,
            "machine": run.machine,
            "images requested (identical queries are generated once)": run.images_requested,
            "generation quality": {k: dataclasses.asdict(q) for k, q in run.generation_quality.items()},
            "diffmia": run.diffmia_version,
            "result schema version": run.schema_version,
        }
    )


def timings(run: RunResult) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The seconds of every stage in every pass: column headers (one per pass) and (stage, seconds...) rows."""
    headers = [f"pass {k + 1} ({p.finished})" for k, p in enumerate(run.passes)]
    stages = list(dict.fromkeys(stage for p in run.passes for stage in p.seconds))
    rows = [
        (stage, [number(p.seconds[stage], 1) if stage in p.seconds else "-" for p in run.passes]) for stage in stages
    ]
    return headers, rows


def side_by_side(cards: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Several cards (training regimes, captioners) as one table: a column per card, a row per dotted key ("-"
    where a card lacks the key), so the target's regime reads beside its shadows'."""
    flat = {name: dict(flatten(card)) for name, card in cards.items()}
    keys = list(dict.fromkeys(key for pairs in flat.values() for key in pairs))
    return list(flat), [(key, [pairs.get(key, "-") for pairs in flat.values()]) for key in keys]
