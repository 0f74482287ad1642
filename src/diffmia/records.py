"""Typed records passed between stages. Frozen dataclasses and numpy arrays, never nested dicts."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from diffmia.errors import DataError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _json_float(value: float) -> float | None:
    """JSON has no NaN: an undefined number is written as null."""
    return None if math.isnan(value) else float(value)


def _from_json_float(value: float | None) -> float:
    """The inverse of :func:`_json_float`: null is an undefined number."""
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval; NaN bounds where the statistic is undefined."""

    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"low": _json_float(self.low), "high": _json_float(self.high), "confidence": self.confidence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        return cls(_from_json_float(data["low"]), _from_json_float(data["high"]), float(data["confidence"]))


@dataclass(frozen=True)
class TprAtFpr:
    """TPR at a target FPR by the conservative rule: the best ROC point whose FPR does not exceed the target.

    ``threshold`` is the score at or above which a sample is called a member to reach that point
    (``inf`` when no sample is). ``reason`` says why ``tpr`` is NaN, when it is.
    """

    target_fpr: float
    tpr: float
    achieved_fpr: float
    threshold: float
    interval: Interval
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "tpr": _json_float(self.tpr),
            "achieved_fpr": _json_float(self.achieved_fpr),
            "threshold": None if not math.isfinite(self.threshold) else self.threshold,
            "interval": self.interval.to_dict(),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TprAtFpr:
        threshold = math.inf if data["threshold"] is None else float(data["threshold"])
        return cls(
            float(data["target_fpr"]),
            _from_json_float(data["tpr"]),
            _from_json_float(data["achieved_fpr"]),
            threshold,
            Interval.from_dict(data["interval"]),
            data.get("reason"),
        )


@dataclass(frozen=True)
class Evaluation:
    """All we report about one set of membership scores, with its counts and how intervals were made."""

    auc: float
    auc_interval: Interval
    tpr_at_fpr: tuple[TprAtFpr, ...]
    n_members: int
    n_nonmembers: int
    n_bootstrap: int
    seed: int
    balanced_accuracy: float | None = None
    balanced_accuracy_interval: Interval | None = None
    threshold: float | None = None

    def at(self, fpr: float) -> TprAtFpr:
        """The TPR record for target FPR ``fpr``."""
        for record in self.tpr_at_fpr:
            if record.target_fpr == fpr:
                return record
        known = ", ".join(str(r.target_fpr) for r in self.tpr_at_fpr)
        raise KeyError(f"no TPR was computed at FPR {fpr}; computed at: {known}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": _json_float(self.auc),
            "auc_interval": self.auc_interval.to_dict(),
            "tpr_at_fpr": [r.to_dict() for r in self.tpr_at_fpr],
            "balanced_accuracy": None if self.balanced_accuracy is None else _json_float(self.balanced_accuracy),
            "balanced_accuracy_interval": (
                None if self.balanced_accuracy_interval is None else self.balanced_accuracy_interval.to_dict()
            ),
            "threshold": self.threshold,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        """The inverse of :meth:`to_dict` (undefined numbers come back as NaN)."""
        balanced = data.get("balanced_accuracy_interval")
        return cls(
            auc=_from_json_float(data["auc"]),
            auc_interval=Interval.from_dict(data["auc_interval"]),
            tpr_at_fpr=tuple(TprAtFpr.from_dict(t) for t in data["tpr_at_fpr"]),
            n_members=int(data["n_members"]),
            n_nonmembers=int(data["n_nonmembers"]),
            n_bootstrap=int(data["n_bootstrap"]),
            seed=int(data["seed"]),
            balanced_accuracy=None if data.get("balanced_accuracy") is None else float(data["balanced_accuracy"]),
            balanced_accuracy_interval=None if balanced is None else Interval.from_dict(balanced),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
        )


@dataclass(frozen=True)
class Sample:
    """One image of a set: stable id, file, caption and membership (None where unknown)."""

    id: str
    image_path: Path
    caption: str | None = None
    member: bool | None = None


@dataclass(frozen=True)
class Query:
    """One image to ask a target for. Every image has its own seed, so it never depends on its batch.

    ``init_image`` + ``strength`` make it an image-to-image query (the target noises the image to ``strength``
    and denoises it); without them it is text-to-image. ``sample_id`` says which sample the query is for and is
    not part of the query's identity.
    """

    prompt: str
    seed: int
    steps: int = 30
    guidance: float = 7.5
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    init_image: Path | None = None
    strength: float | None = None
    sample_id: str | None = field(default=None, compare=False)

    @property
    def mode(self) -> str:
        return "img2img" if self.init_image is not None else "text2img"

    def identity(self) -> dict[str, Any]:
        """What determines the image: every field but ``sample_id``, with the init image by content hash."""
        init = None
        if self.init_image is not None:
            init = hashlib.sha256(Path(self.init_image).read_bytes()).hexdigest()
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "negative_prompt": self.negative_prompt,
            "width": self.width,
            "height": self.height,
            "init_image_sha256": init,
            "strength": self.strength,
        }

    def key(self, target_fingerprint: str) -> str:
        """Content address of this query's image on the target with ``target_fingerprint``."""
        payload = json.dumps({"target": target_fingerprint, **self.identity()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class FeatureTable:
    """One row per sample: membership features where higher means "more likely a member".

    ``y`` holds the membership labels where they are known (shadow data, or a labelled target).
    """

    sample_ids: tuple[str, ...]
    X: FloatArray
    names: tuple[str, ...]
    y: BoolArray | None = field(default=None)

    def __post_init__(self) -> None:
        problems = []
        if self.X.ndim != 2:
            problems.append(f"X must be 2-D (samples, features), got shape {self.X.shape}")
        elif self.X.shape != (len(self.sample_ids), len(self.names)):
            problems.append(
                f"X has shape {self.X.shape} but there are {len(self.sample_ids)} sample ids "
                f"and {len(self.names)} feature names"
            )
        if len(set(self.sample_ids)) != len(self.sample_ids):
            problems.append("sample ids are not unique")
        if len(set(self.names)) != len(self.names):
            problems.append("feature names are not unique")
        if self.y is not None and self.y.shape != (len(self.sample_ids),):
            problems.append(f"y has shape {self.y.shape}, expected ({len(self.sample_ids)},)")
        if problems:
            raise DataError("invalid feature table: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self.sample_ids)

    def select(self, names: Sequence[str]) -> FeatureTable:
        """The table of the columns ``names`` only, in that order."""
        index = [self.names.index(n) for n in names]
        return FeatureTable(self.sample_ids, self.X[:, index], tuple(names), self.y)


@dataclass(frozen=True)
class ScoreSet:
    """One attack's frozen scores of one model's samples in one scenario, with their evaluation.

    ``model`` is "target", or a control: "base" (the un-fine-tuned base model queried like the target) or
    "blind" (a classifier on the query images alone). ``channel`` names the query channel whose features the
    attack saw ("text2img", "img2img", "combined"; "none" for the blind control).
    """

    scenario: str
    model: str
    channel: str
    attack: str
    sample_ids: tuple[str, ...]
    scores: FloatArray
    labels: BoolArray
    evaluation: Evaluation

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.model}/{self.channel}/{self.attack}"
