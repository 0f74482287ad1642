"""The results of a run, with one owner: what an audit writes into its run directory and what every reader (the
report, the set test, studies, the command line) reads back, as typed records.

A finished run directory holds two result files (documented in ``docs/results.md``):

- ``result.json``: the :class:`RunResult` without per-sample scores, with a ``schema_version``;
- ``scores.parquet``: one row per (scenario, model, channel, attack, sample): the frozen score and the true label.

Version 1 is the layout from before ``schema_version`` existed (one ``timings_seconds`` block, no recorded headline);
it still loads. A file of a newer schema than this diffmia knows is refused with a message that says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffmia.errors import DataError
from diffmia.files import atomic_path, write_json
from diffmia.records import Evaluation, FeatureTable, ScoreSet

SCHEMA_VERSION = 2
RESULT_FILE = "result.json"
SCORES_FILE = "scores.parquet"
FEATURES_FILE = "features.parquet"
COMBINED = "combined"
SCORE_COLUMNS = ("scenario", "model", "channel", "attack", "sample_id", "member", "score")
HEADLINE_RULE = (
    "fixed before the run: in every scenario, all query channels together (the one channel when there is one) and "
    "the classifier attack (else the first attack); the first scenario leads"
)


def shadow_headline_rule(fpr: float, folds: int) -> str:
    """The rule of ``[attacks] headline = "shadow"``, in words."""
    return (
        f"of the shadow data only, applied before the target is scored: in every scenario, the channel set and "
        f"attack with the highest out-of-fold TPR at {fpr:.0%} FPR on the shadows (one fold per shadow model "
        f"where there are several, else {folds} stratified folds; AUC breaks ties, and decides alone where the "
        "shadows hold too few non-members to resolve that FPR; then the configured order); the first scenario "
        "leads"
    )


_REQUIRED = (
    "name",
    "finished",
    "diffmia_version",
    "data",
    "queries_per_image",
    "channels",
    "scenarios",
    "results",
    "warnings",
    "exposed",
    "models",
    "captioners",
    "seeds",
    "generation",
    "images_requested",
    "versions",
    "machine",
)


def fixed_headline(channels: Sequence[str], attacks: Sequence[str]) -> tuple[str, str]:
    """The (channel, attack) a scenario leads with by the fixed :data:`HEADLINE_RULE`, never chosen by the results."""
    channel = COMBINED if len(channels) > 1 else channels[0]
    return channel, "classifier" if "classifier" in attacks else attacks[0]


@dataclass(frozen=True)
class DataSummary:
    """Where the candidates came from and how many there were."""

    source: str
    members: int
    nonmembers: int
    auxiliary: int
    d_prime_size: int
    overlap: float


@dataclass(frozen=True)
class ExposedImage:
    """A member beside the target's generations for it (image paths as they were when the run finished)."""

    sample_id: str
    image: str
    prompt: str
    score: float
    generations: tuple[tuple[str, str], ...]  # (channel, image path)


@dataclass(frozen=True)
class Exposure:
    """The members the target leaks most, ranked by one score set fixed before the run."""

    scenario: str
    channel: str
    attack: str
    images: tuple[ExposedImage, ...]


@dataclass(frozen=True)
class Quality:
    """A model's generation quality on the bundled digits (see ``diffmia.quality``)."""

    digit_accuracy: float
    frechet_distance: float
    generations: int


@dataclass(frozen=True)
class Pass:
    """One pass of the audit over the run directory: when it finished and the seconds each stage took. A resumed or
    repeated run adds a pass, so the cost of the first (real) work is never overwritten by a cached rerun's."""

    finished: str
    seconds: dict[str, float]


@dataclass(frozen=True)
class RunResult:
    """Everything a run reports. ``score_sets`` holds every (scenario, model, channel, attack) with its per-sample
    scores, labels and evaluation; ``headline`` maps each scenario to the (channel, attack) it leads with."""

    name: str
    diffmia_version: str
    machine: str
    versions: dict[str, str]
    data: DataSummary
    scenarios: tuple[str, ...]
    channels: tuple[str, ...]
    queries_per_image: int
    generation: dict[str, Any]
    seeds: dict[str, int]
    models: dict[str, dict[str, Any]]
    captioners: dict[str, dict[str, Any]]
    images_requested: dict[str, int]
    generation_quality: dict[str, Quality]
    warnings: tuple[str, ...]
    exposed: Exposure | None
    headline: dict[str, tuple[str, str]]
    passes: tuple[Pass, ...]
    score_sets: tuple[ScoreSet, ...]
    candidate_images: dict[str, str] = field(default_factory=dict)  # the target's candidates' files, by sample id
    headline_rule: str = HEADLINE_RULE
    # per scenario, what the headline was chosen by: every candidate's out-of-fold shadow AUC and TPR (rule "shadow")
    headline_validation: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    run_dir: Path | None = field(default=None, compare=False)

    @property
    def finished(self) -> str:
        return self.passes[-1].finished

    @property
    def first_scenario_headline(self) -> tuple[str, str, str]:
        scenario = self.scenarios[0]
        return (scenario, *self.headline[scenario])

    def find(self, scenario: str, model: str, channel: str, attack: str) -> ScoreSet | None:
        for s in self.score_sets:
            if (s.scenario, s.model, s.channel, s.attack) == (scenario, model, channel, attack):
                return s
        return None

    def headline_set(self, scenario: str, model: str = "target") -> ScoreSet | None:
        """The scenario's headline score set on ``model`` (the target, or a control queried the same way)."""
        return self.find(scenario, model, *self.headline[scenario])

    def controls(self, scenario: str) -> list[ScoreSet]:
        """The control score sets of a scenario a reader compares the headline with: the base model under the
        headline's channel and attack, and the blind classifier."""
        found = [self.headline_set(scenario, "base")]
        found += [s for s in self.score_sets if s.scenario == scenario and s.model == "blind"]
        return [s for s in found if s is not None]

    def to_dict(self) -> dict[str, Any]:
        """``result.json``: every field but the per-sample scores (which go to ``scores.parquet``)."""
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "finished": self.finished,
            "diffmia_version": self.diffmia_version,
            "machine": self.machine,
            "versions": self.versions,
            "data": vars(self.data),
            "scenarios": list(self.scenarios),
            "channels": list(self.channels),
            "queries_per_image": self.queries_per_image,
            "generation": self.generation,
            "seeds": self.seeds,
            "models": self.models,
            "captioners": self.captioners,
            "images_requested": self.images_requested,
            "generation_quality": {k: vars(q) for k, q in self.generation_quality.items()},
            "warnings": list(self.warnings),
            "exposed": _exposure_to_dict(self.exposed),
            "headline_rule": self.headline_rule,
            "headline": {s: list(key) for s, key in self.headline.items()},
            "headline_validation": self.headline_validation,
            "passes": [{"finished": p.finished, "seconds": p.seconds} for p in self.passes],
            "candidate_images": self.candidate_images,
            "results": [
                {
                    "scenario": s.scenario,
                    "model": s.model,
                    "channel": s.channel,
                    "attack": s.attack,
                    "evaluation": s.evaluation.to_dict(),
                }
                for s in self.score_sets
            ],
        }


def _exposure_to_dict(exposure: Exposure | None) -> dict[str, Any]:
    if exposure is None:
        return {}
    images = [
        {
            "sample_id": i.sample_id,
            "image": i.image,
            "prompt": i.prompt,
            "score": i.score,
            "generations": [{"channel": c, "image": path} for c, path in i.generations],
        }
        for i in exposure.images
    ]
    return {"scenario": exposure.scenario, "channel": exposure.channel, "attack": exposure.attack, "images": images}


def _exposure_from_dict(data: Mapping[str, Any]) -> Exposure | None:
    if not data:
        return None
    images = tuple(
        ExposedImage(
            i["sample_id"],
            i["image"],
            i["prompt"],
            float(i["score"]),
            tuple((g["channel"], g["image"]) for g in i["generations"]),
        )
        for i in data["images"]
    )
    return Exposure(data["scenario"], data["channel"], data["attack"], images)


# --- writing -------------------------------------------------------------------------------------------------


def save_run(run_dir: str | Path, result: RunResult) -> None:
    """Write ``scores.parquet`` then ``result.json`` (each atomically; result.json last, so a run directory with a
    result.json is a finished one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = Path(run_dir)
    columns: dict[str, list[Any]] = {k: [] for k in SCORE_COLUMNS}
    for s in result.score_sets:
        n = len(s.sample_ids)
        for key in ("scenario", "model", "channel", "attack"):
            columns[key] += [getattr(s, key)] * n
        columns["sample_id"] += list(s.sample_ids)
        columns["member"] += [bool(v) for v in s.labels]
        columns["score"] += [float(v) for v in s.scores]
    with atomic_path(run / SCORES_FILE) as tmp:
        pq.write_table(pa.table(columns), tmp)
    write_json(run / RESULT_FILE, result.to_dict())


def save_features(run_dir: str | Path, tables: Mapping[tuple[str, str], FeatureTable]) -> None:
    """All feature tables in ``features.parquet``: one row per (model, prompt source, sample), with its label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for (model, source), table in tables.items():
        columns: dict[str, Any] = {
            "model": [model] * len(table),
            "prompts": [source] * len(table),
            "sample_id": list(table.sample_ids),
            "member": table.y if table.y is not None else [None] * len(table),
        }
        columns.update({name: table.X[:, i] for i, name in enumerate(table.names)})
        parts.append(pa.table(columns))
    with atomic_path(Path(run_dir) / FEATURES_FILE) as tmp:
        pq.write_table(pa.concat_tables(parts), tmp)


def previous_passes(run_dir: str | Path) -> tuple[Pass, ...]:
    """The passes recorded by earlier runs into ``run_dir`` (none when it holds no readable result)."""
    try:
        return load_run(run_dir).passes
    except DataError:
        return ()


# --- reading -------------------------------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> RunResult:
    """The results of a finished run directory; a :class:`DataError` that says what is wrong otherwise."""
    run = Path(run_dir)
    path = run / RESULT_FILE
    if not run.is_dir():
        raise DataError(f"run directory {run} does not exist")
    if not path.is_file() or not (run / SCORES_FILE).is_file():
        raise DataError(f"{run} has no {RESULT_FILE} and {SCORES_FILE}: it is not a finished diffmia run directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rerun the audit to rewrite it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not a run result; rerun the audit to rewrite it")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise DataError(
            f"{path} has schema version {version!r}, written by diffmia {data.get('diffmia_version')}; "
            f"this diffmia reads versions up to {SCHEMA_VERSION}: upgrade diffmia to read it"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(missing)}: it was edited or is not a diffmia result; rerun the "
            "audit to rewrite it"
        )
    try:
        return _from_dict(data, _read_scores(run / SCORES_FILE), run)
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path} does not match its schema (version {version}): {exc!r}; rerun the audit to rewrite it"
        ) from None


def _read_scores(path: Path) -> dict[tuple[str, str, str, str], tuple[list[str], list[float], list[bool]]]:
    from diffmia.tables import read_table

    table = read_table(path)
    missing = [c for c in SCORE_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path} has no column {', '.join(missing)}: it was not written by diffmia's audit")
    rows = table.to_pydict()
    groups: dict[tuple[str, str, str, str], tuple[list[str], list[float], list[bool]]] = {}
    for i in range(table.num_rows):
        ids, scores, labels = groups.setdefault(tuple(rows[k][i] for k in SCORE_COLUMNS[:4]), ([], [], []))
        ids.append(str(rows["sample_id"][i]))
        scores.append(float(rows["score"][i]))
        labels.append(bool(rows["member"][i]))
    return groups


def _validation_row(row: dict[str, Any]) -> dict[str, Any]:
    """One candidate of a shadow-chosen headline, as the audit writes it (a missing or mistyped field is a
    KeyError / TypeError / ValueError, which the loader reports as a schema mismatch)."""
    return {
        "channel": str(row["channel"]),
        "attack": str(row["attack"]),
        "auc": float(row["auc"]),
        "tpr": None if row["tpr"] is None else float(row["tpr"]),
        "fpr": float(row["fpr"]),
        "folds": int(row["folds"]),
    }


def _from_dict(data: dict[str, Any], scores: dict[tuple[str, str, str, str], Any], run: Path) -> RunResult:
    score_sets = []
    for r in data["results"]:
        key = (r["scenario"], r["model"], r["channel"], r["attack"])
        if key not in scores:
            raise DataError(f"{run / SCORES_FILE} has no scores of {'/'.join(key)}, which {RESULT_FILE} reports")
        ids, values, labels = scores[key]
        score_sets.append(
            ScoreSet(
                *key,
                tuple(ids),
                np.array(values, dtype=np.float64),
                np.array(labels, dtype=bool),
                Evaluation.from_dict(r["evaluation"]),
            )
        )
    if "passes" in data:
        passes = tuple(Pass(p["finished"], dict(p["seconds"])) for p in data["passes"])
    else:  # version 1: one block of timings, from the last pass only
        passes = (Pass(data["finished"], dict(data.get("timings_seconds", {}))),)
    attacks = list(dict.fromkeys(s.attack for s in score_sets if s.model == "target")) or ["classifier"]
    recorded = data.get("headline") or {s: fixed_headline(data["channels"], attacks) for s in data["scenarios"]}
    return RunResult(
        name=data["name"],
        diffmia_version=data["diffmia_version"],
        machine=data["machine"],
        versions=dict(data["versions"]),
        data=DataSummary(**data["data"]),
        scenarios=tuple(data["scenarios"]),
        channels=tuple(data["channels"]),
        queries_per_image=int(data["queries_per_image"]),
        generation=dict(data["generation"]),
        seeds=dict(data["seeds"]),
        models=dict(data["models"]),
        captioners=dict(data["captioners"]),
        images_requested=dict(data["images_requested"]),
        generation_quality={k: Quality(**q) for k, q in data.get("generation_quality", {}).items()},
        warnings=tuple(data["warnings"]),
        exposed=_exposure_from_dict(data["exposed"]),
        headline={s: (str(c), str(a)) for s, (c, a) in recorded.items()},
        passes=passes,
        score_sets=tuple(score_sets),
        candidate_images=dict(data.get("candidate_images", {})),
        headline_rule=data.get("headline_rule", HEADLINE_RULE),
        headline_validation={
            s: [_validation_row(r) for r in rows] for s, rows in data.get("headline_validation", {}).items()
        },
        schema_version=int(data.get("schema_version", 1)),
        run_dir=run,
    )
