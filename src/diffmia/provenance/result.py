"""What ``diffmia provenance`` answers, as typed records: the verdict first, the test that decided it, its controls,
the query budget and the images that weigh most; written as ``provenance.json`` and read back by
:func:`load_provenance`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, SkipValidation, TypeAdapter, ValidationError, computed_field
from pydantic.dataclasses import dataclass

from diffmia.errors import DataError
from diffmia.files import write_json
from diffmia.results import ExposedImage, Pass

RESULT_FILE = "provenance.json"
SCHEMA_VERSION = 1
USED: Literal["used"] = "used"
NO_EVIDENCE: Literal["no evidence of use"] = "no evidence of use"
INCONCLUSIVE: Literal["inconclusive"] = "inconclusive"
Verdict = Literal["used", "no evidence of use", "inconclusive"]
_RECORD = ConfigDict(frozen=True)


@dataclass(config=_RECORD)
class Finding:
    """One cross-fitted permutation test (:mod:`diffmia.provenance.crossfit`): what it read, the held-out AUC of
    the suspects against the references with its bootstrap interval, the range that AUC takes by chance (the
    central 95% of its relabellings: cross-fitting pulls it a little below 0.5 when there is nothing to find), and
    the p-value."""

    name: str  # "target", or a control: "base model", "blind"
    evidence: str  # what its features are, in words
    features: int
    auc: float
    auc_low: float
    auc_high: float
    chance_low: float
    chance_high: float
    p_value: float
    min_p_value: float
    permutations: int
    folds: int


@dataclass(config=_RECORD)
class ImageScore:
    """One image's held-out score in the target's test (higher: more like the suspects)."""

    sample_id: str
    suspect: bool
    score: float


@dataclass(config=ConfigDict(frozen=True, arbitrary_types_allowed=True), kw_only=True)
class ProvenanceResult:
    """The owner's answer: ``verdict`` (used, no evidence of use, inconclusive) and ``reason`` in words, the test on
    the target's answers, the controls (the same test on the base model's answers, and on the images alone), the
    counts, the query budget and the seeds."""

    schema_version: int = SCHEMA_VERSION
    name: str
    diffmia_version: str
    verdict: Verdict
    reason: str
    alpha: float
    control_alpha: float
    test: Finding
    controls: tuple[Finding, ...]
    suspects: int
    references: int
    prompts: tuple[str, ...]  # the prompt sources the features were measured with
    evidence: tuple[str, ...]  # the kinds of evidence the target's test read (black-box channels, gray-box loss)
    channels: tuple[str, ...]
    queries_per_image: int
    images_requested: dict[str, int]
    seeds: dict[str, int]
    models: dict[str, str]  # the target and the base model, as given
    weighing: tuple[ExposedImage, ...]  # the suspects the test set apart most, beside the target's generations
    scores: tuple[ImageScore, ...]
    passes: tuple[Pass, ...]
    run_dir: Annotated[SkipValidation[Path | None], Field(exclude=True)] = dataclasses.field(
        default=None, compare=False
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def p_value(self) -> float:
        """The p-value of the test on the target's answers (the one the verdict reads)."""
        return self.test.p_value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effect(self) -> float:
        """The effect size: the held-out AUC of the suspects against the references in the target's test."""
        return self.test.auc

    @property
    def budget(self) -> str:
        """The counts and the query budget, in words."""
        asked = ", ".join(f"{n:,} of the {model}" for model, n in self.images_requested.items())
        return (
            f"{self.suspects} suspects and {self.references} references; {self.queries_per_image} generation(s) per "
            f"image and channel ({', '.join(self.channels)}), prompts: {', '.join(self.prompts)}; images asked: {asked}"
        )

    def to_dict(self) -> dict[str, object]:
        document: dict[str, object] = _RESULT.dump_python(self, mode="json")
        return document


_RESULT: TypeAdapter[ProvenanceResult] = TypeAdapter(ProvenanceResult)


def save_provenance(run_dir: Path, result: ProvenanceResult) -> Path:
    """Write ``provenance.json`` (atomically) and return its path."""
    path = run_dir / RESULT_FILE
    write_json(path, result.to_dict())
    return path


def load_provenance(run_dir: str | Path) -> ProvenanceResult:
    """The result of a finished ``diffmia provenance`` run directory; a :class:`DataError` saying what is wrong."""
    run = Path(run_dir)
    path = run / RESULT_FILE
    if not path.is_file():
        raise DataError(f"{run} has no {RESULT_FILE}: it is not a finished diffmia provenance run directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); run diffmia provenance again to rewrite it") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise DataError(f"{path} has schema version {version!r}; this diffmia reads versions up to {SCHEMA_VERSION}")
    try:
        return _RESULT.validate_python({**data, "run_dir": run})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DataError(f"{path} does not match its schema: {first['msg']} at {first['loc']}") from None
