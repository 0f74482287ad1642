"""Fixtures shared across the test suite."""

from __future__ import annotations

import pytest

from bombs import BOMB_PNG
from diffmia.lab.pipeline import build_pipeline
from sizes import TINY

CAPTIONS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]


@pytest.fixture(scope="session")
def bomb_png():
    """A function writing a 65-byte PNG that declares 20000 x 20000 pixels (a decompression bomb) to ``path``."""

    def write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(BOMB_PNG)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised tiny Stable Diffusion pipeline folder: enough to test plumbing, seeded."""
    folder = tmp_path_factory.mktemp("tiny") / "pipeline"
    build_pipeline(CAPTIONS, TINY, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def write_run():
    """A function saving a finished run directory at ``root`` from per-sample score columns (as scores.parquet
    holds them), with every score set evaluated as the audit does; returns the RunResult."""
    import numpy as np

    from diffmia.config import EvaluationConfig
    from diffmia.records import ScoreSet
    from diffmia.results import DataSummary, Pass, RunResult, fixed_headline, save_run

    def write(root, columns, scenarios, channels):
        keys = list(dict.fromkeys(zip(*(columns[k] for k in ("scenario", "model", "channel", "attack")), strict=True)))
        evaluation = EvaluationConfig(n_bootstrap=50)
        sets = []
        for key in keys:
            rows = [
                i
                for i in range(len(columns["score"]))
                if tuple(columns[k][i] for k in ("scenario", "model", "channel", "attack")) == key
            ]
            scores = np.array([columns["score"][i] for i in rows])
            labels = np.array([columns["member"][i] for i in rows], dtype=bool)
            ids = tuple(columns["sample_id"][i] for i in rows)
            sets.append(ScoreSet(*key, ids, scores, labels, evaluation.evaluate(scores, labels, threshold=0.0)))
        attacks = list(dict.fromkeys(k[3] for k in keys))
        members = int(sets[0].labels.sum())
        result = RunResult(
            name="hand-made",
            diffmia_version="test",
            machine="test",
            versions={},
            data=DataSummary("folders", members, len(sets[0].labels) - members, 0, 0, 0.5),
            scenarios=tuple(scenarios),
            channels=tuple(channels),
            queries_per_image=1,
            generation={},
            seeds={},
            models={},
            captioners={},
            images_requested={},
            generation_quality={},
            warnings=(),
            exposed=None,
            headline={s: fixed_headline(channels, attacks) for s in scenarios},
            passes=(Pass("2026-12-01 00:00:00 UTC", {"total (before the report)": 1.0}),),
            score_sets=tuple(sets),
        )
        root.mkdir(parents=True, exist_ok=True)
        save_run(root, result)
        return result

    return write


@pytest.fixture(scope="session")
def builtin():
    """The shipped tiny base (trained on digits, so its VAE gives an image back): img2img keeps what it is given."""
    from diffmia.targets.diffusers import DiffusersTarget

    return DiffusersTarget("builtin", device="cpu", dtype="float64")
