"""The results of a run, with one owner: what an audit writes into its run directory and what every reader (the
report, the set test, studies, the command line) reads back, as typed records.

A finished run directory holds two result files (documented in ``docs/results.md``):

- ``result.json``: the :class:`RunResult` without per-sample scores, with a ``schema_version``;
- ``scores.parquet``: one row per (scenario, model, channel, attack, sample): the frozen score and the true label.

The records are pydantic dataclasses: ``result.json`` is their JSON form, written and read back by pydantic (a file
that does not fit them is a :class:`DataError` naming where). Version 1 is the layout from before
``schema_version`` existed (one ``timings_seconds`` block, no recorded headline); it is upgraded as it loads. A file
of a newer schema than this diffmia knows is refused with a message that says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    SkipValidation,
    TypeAdapter,
    ValidationError,
    computed_field,
)
from pydantic.dataclasses import dataclass

from diffmia.errors import DataError
from diffmia.files import atomic_path, write_json
from diffmia.names import COMBINED
from diffmia.records import Evaluation, FeatureTable, ScoreSet

SCHEMA_VERSION = 2
RESULT_FILE = "result.json"
SCORES_FILE = "scores.parquet"
FEATURES_FILE = "features.parquet"
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
_RECORD = ConfigDict(frozen=True)


def fixed_headline(channels: Sequence[str], attacks: Sequence[str]) -> tuple[str, str]:
    """The (channel, attack) a scenario leads with by the fixed :data:`HEADLINE_RULE`, never chosen by the results."""
    channel = COMBINED if len(channels) > 1 else channels[0]
    return channel, "classifier" if "classifier" in attacks else attacks[0]


def _evaluation(value: Any) -> Any:
    return Evaluation.from_dict(value) if isinstance(value, dict) else value


# an evaluation as result.json holds it (undefined numbers as null)
EvaluationRecord = Annotated[Evaluation, BeforeValidator(_evaluation), PlainSerializer(Evaluation.to_dict)]


@dataclass(config=_RECORD)
class DataSummary:
    """Where the candidates came from and how many there were."""

    source: str
    members: int
    nonmembers: int
    auxiliary: int
    d_prime_size: int
    overlap: float


@dataclass(config=_RECORD)
class GeneratedImage:
    """One of the target's generations for an exposed member: its query channel and image file."""

    channel: str
    image: str


@dataclass(config=_RECORD)
class ExposedImage:
    """A member beside the target's generations for it (image paths as they were when the run finished)."""

    sample_id: str
    image: str
    prompt: str
    score: float
    generations: tuple[GeneratedImage, ...]


@dataclass(config=_RECORD)
class Exposure:
    """The members the target leaks most, ranked by one score set fixed before the run."""

    scenario: str
    channel: str
    attack: str
    images: tuple[ExposedImage, ...]


def _no_exposure(value: Any) -> Any:
    return None if value == {} else value  # result.json writes a run without exposed members as {}


_EXPOSURE: TypeAdapter[Exposure] = TypeAdapter(Exposure)


def _exposure_json(exposure: Exposure | None) -> dict[str, Any]:
    dumped: dict[str, Any] = {} if exposure is None else _EXPOSURE.dump_python(exposure, mode="json")
    return dumped


ExposureRecord = Annotated[Exposure | None, BeforeValidator(_no_exposure), PlainSerializer(_exposure_json)]


@dataclass(config=_RECORD)
class Quality:
    """A model's generation quality on the bundled digits (see ``diffmia.quality``)."""

    digit_accuracy: float
    frechet_distance: float
    generations: int


@dataclass(config=_RECORD)
class Pass:
    """One pass of the audit over the run directory: when it finished and the seconds each stage took. A resumed or
    repeated run adds a pass, so the cost of the first (real) work is never overwritten by a cached rerun's."""

    finished: str
    seconds: dict[str, float]


@dataclass(config=_RECORD)
class HeadlineCandidate:
    """One (channel, attack) a shadow-chosen headline was chosen among: its out-of-fold performance on the shadow
    data (TPR None where the shadows hold too few non-members to resolve the FPR)."""

    channel: str
    attack: str
    auc: float
    tpr: float | None
    fpr: float
    folds: int


@dataclass(config=_RECORD)
class ResultRow:
    """One score set as ``result.json`` lists it: its key and evaluation (its scores are in ``scores.parquet``)."""

    scenario: str
    model: str
    channel: str
    attack: str
    evaluation: EvaluationRecord


@dataclass(config=ConfigDict(frozen=True, arbitrary_types_allowed=True), kw_only=True)
class RunResult:
    """Everything a run reports. ``score_sets`` holds every (scenario, model, channel, attack) with its per-sample
    scores, labels and evaluation; ``headline`` maps each scenario to the (channel, attack) it leads with.
    ``generation`` is the run's ``[generation]`` section and ``models`` / ``captioners`` the cards of the models it
    queried, as JSON (each card is the record its trainer wrote)."""

    schema_version: int = SCHEMA_VERSION
    name: str
    diffmia_version: str
    machine: str
    versions: dict[str, str]
    data: DataSummary
    scenarios: tuple[str, ...]
    channels: tuple[str, ...]
    queries_per_image: int
    generation: dict[str, JsonValue]
    seeds: dict[str, int]
    models: dict[str, dict[str, JsonValue]]
    captioners: dict[str, dict[str, JsonValue]]
    images_requested: dict[str, int]
    generation_quality: dict[str, Quality]
    warnings: tuple[str, ...]
    exposed: ExposureRecord
    headline_rule: str = HEADLINE_RULE
    headline: dict[str, tuple[str, str]]
    # per scenario, what the headline was chosen by: every candidate's out-of-fold shadow AUC and TPR (rule "shadow")
    headline_validation: dict[str, list[HeadlineCandidate]] = Field(default_factory=dict)
    passes: tuple[Pass, ...]
    candidate_images: dict[str, str] = Field(default_factory=dict)  # the target's candidates' files, by sample id
    score_sets: SkipValidation[tuple[ScoreSet, ...]] = Field(exclude=True)
    run_dir: Annotated[SkipValidation[Path | None], Field(exclude=True)] = dataclasses.field(
        default=None, compare=False
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def finished(self) -> str:
        return self.passes[-1].finished

    @computed_field  # type: ignore[prop-decorator]
    @property
    def results(self) -> list[ResultRow]:
        return [ResultRow(s.scenario, s.model, s.channel, s.attack, s.evaluation) for s in self.score_sets]

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
        document: dict[str, Any] = _RUN.dump_python(self, mode="json")
        return document


_RUN: TypeAdapter[RunResult] = TypeAdapter(RunResult)


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
        document = _upgrade_v1(data) if version == 1 else data
        return _RUN.validate_python({**document, "score_sets": _score_sets(document, run), "run_dir": run})
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = f"{first['msg']} at {first['loc']}"
    except (KeyError, TypeError) as exc:  # a version-1 file without the fields its upgrade reads
        problem = repr(exc)
    raise DataError(f"{path} does not match its schema (version {version}): {problem}; rerun the audit to rewrite it")


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


def _score_sets(data: dict[str, Any], run: Path) -> tuple[ScoreSet, ...]:
    """The score sets ``result.json`` lists, each with its scores from ``scores.parquet``."""
    scores = _read_scores(run / SCORES_FILE)
    rows = data["results"]
    if not isinstance(rows, list):
        raise DataError(f"{run / RESULT_FILE} lists its results as a {type(rows).__name__}; rerun the audit")
    sets = []
    for row in TypeAdapter(list[ResultRow]).validate_python(rows):
        key = (row.scenario, row.model, row.channel, row.attack)
        if key not in scores:
            raise DataError(f"{run / SCORES_FILE} has no scores of {'/'.join(key)}, which {RESULT_FILE} reports")
        ids, values, labels = scores[key]
        sets.append(
            ScoreSet(*key, tuple(ids), np.array(values, np.float64), np.array(labels, dtype=bool), row.evaluation)
        )
    return tuple(sets)


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 ``result.json`` in the version-2 layout: its one block of timings as one pass, and the headline
    of the fixed rule (version 1 recorded none)."""
    attacks = list(dict.fromkeys(r["attack"] for r in data["results"] if r["model"] == "target")) or ["classifier"]
    headline = data.get("headline") or {s: fixed_headline(data["channels"], attacks) for s in data["scenarios"]}
    passes = data.get("passes") or [{"finished": data["finished"], "seconds": data.get("timings_seconds", {})}]
    return {**data, "schema_version": 1, "headline": headline, "passes": passes}
