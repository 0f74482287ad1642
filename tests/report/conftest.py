"""A finished run to render: a copy of tests/data/run-v1 (schema version 1, saved before RunResult existed)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FIXTURE = Path(__file__).parent.parent / "data" / "run-v1"


def _edit_result(run: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the run's result.json in place; return the changed result."""
    result = json.loads((run / "result.json").read_text())
    change(result)
    (run / "result.json").write_text(json.dumps(result))
    return result


def _rename_sample(run: Path, old: str, new: str) -> None:
    """Rename a candidate in scores.parquet (every score set) and among the exposed members."""
    table = pq.read_table(run / "scores.parquet").to_pydict()
    table["sample_id"] = [new if s == old else s for s in table["sample_id"]]
    pq.write_table(pa.table(table), run / "scores.parquet")

    def change(result: dict[str, Any]) -> None:
        for image in result["exposed"]["images"]:
            if image["sample_id"] == old:
                image["sample_id"] = new

    _edit_result(run, change)


def _headline(result: dict[str, Any], scenario: str, model: str = "target") -> dict[str, Any]:
    """The evaluation of a scenario's headline score set in a version-1 result (combined channel, classifier)."""
    key = (scenario, model, "combined", "classifier")
    (hit,) = [
        r["evaluation"] for r in result["results"] if (r["scenario"], r["model"], r["channel"], r["attack"]) == key
    ]
    return hit


@pytest.fixture
def edit_result() -> Callable[[Path, Callable[[dict[str, Any]], None]], dict[str, Any]]:
    return _edit_result


@pytest.fixture
def rename_sample() -> Callable[[Path, str, str], None]:
    return _rename_sample


@pytest.fixture
def headline() -> Callable[..., dict[str, Any]]:
    return _headline


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The fixture run in ``tmp_path``, its exposed images pointed at files that do not exist."""
    run = Path(shutil.copytree(FIXTURE, tmp_path / "run"))

    def gone(result: dict[str, Any]) -> None:
        for image in result["exposed"]["images"]:
            image["image"] = str(tmp_path / "gone" / Path(image["image"]).name)
            for generation in image["generations"]:
                generation["image"] = str(tmp_path / "gone" / Path(generation["image"]).name)

    _edit_result(run, gone)
    return run


@pytest.fixture
def fixture_result() -> dict[str, Any]:
    """The fixture's result.json as saved."""
    return json.loads((FIXTURE / "result.json").read_text())
