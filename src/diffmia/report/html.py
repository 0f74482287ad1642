"""``report.html``: one self-contained page (figures and images inline), rendered by Jinja2 with autoescape.

Everything comes from the run directory (``result.json``, ``scores.parquet`` and the image files they name),
so ``diffmia report RUN_DIR`` renders the same page again without any model.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffmia.errors import DataError
from diffmia.report.plots import histogram_figure, roc_figure
from diffmia.tables import atomic_path, read_table

TEMPLATE = "report.html.j2"
REQUIRED = ("name", "finished", "diffmia_version", "data", "queries_per_image", "channels", "scenarios", "results",
            "warnings", "exposed", "models", "captioners", "seeds", "generation", "images_requested", "versions",
            "machine", "timings_seconds")  # fmt: skip
CONTROL_NAMES = {"target": "target", "base": "base model (control)", "blind": "blind (control)"}


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_uri(path: str) -> str | None:
    """An image file as a PNG data URI, or None when it is gone (the report says so instead of failing)."""
    try:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        return None
    return _data_uri(buffer.getvalue())


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _rows(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Table rows, and the reasons behind any n/a (each once, under the table)."""
    rows: list[dict[str, Any]] = []
    notes: dict[str, None] = {}
    for r in results:
        ev = r["evaluation"]
        auc_ci = ev["auc_interval"]
        tprs = []
        for t in ev["tpr_at_fpr"]:
            if t["tpr"] is None:
                notes[t["reason"] or "undefined"] = None
                tprs.append({"value": "n/a", "detail": ""})
            else:
                ci = t["interval"]
                tprs.append(
                    {
                        "value": _fmt(t["tpr"]),
                        "detail": f"FPR {_fmt(t['achieved_fpr'], 4)}; [{_fmt(ci['low'])}, {_fmt(ci['high'])}]",
                    }
                )
        rows.append({
            "scenario": r["scenario"], "model": CONTROL_NAMES.get(r["model"], r["model"]),
            "control": r["model"] != "target", "channel": r["channel"], "attack": r["attack"], "auc": _fmt(ev["auc"]),
            "auc_ci": f"[{_fmt(auc_ci['low'])}, {_fmt(auc_ci['high'])}]", "tprs": tprs,
            "balanced_accuracy": _fmt(ev["balanced_accuracy"]), "members": ev["n_members"],
            "nonmembers": ev["n_nonmembers"],
        })  # fmt: skip
    return rows, list(notes)


def render_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the run's saved results; return its path."""
    import jinja2

    run = Path(run_dir)
    result_path = run / "result.json"
    if not result_path.is_file():
        raise DataError(f"{run} has no result.json: it is not a finished diffmia run directory")
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{result_path} is not valid JSON ({exc.msg}); rerun the audit to rewrite it") from None
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise DataError(f"{result_path} lacks {', '.join(missing)}: it was written by another diffmia version or "
                        "edited; rerun the audit to rewrite it")  # fmt: skip
    scores = read_table(run / "scores.parquet").to_pydict()
    groups: dict[tuple[str, str, str, str], tuple[list[float], list[bool]]] = {}
    for scenario, model, channel, attack, score, member in zip(
        scores["scenario"], scores["model"], scores["channel"], scores["attack"], scores["score"], scores["member"],
        strict=True,
    ):  # fmt: skip
        values, labels = groups.setdefault((scenario, model, channel, attack), ([], []))
        values.append(score)
        labels.append(bool(member))
    figures = []
    fprs = [t["target_fpr"] for t in result["results"][0]["evaluation"]["tpr_at_fpr"]] if result["results"] else []
    channels = result["channels"]
    main_channel = "combined" if len(channels) > 1 else channels[0]
    for scenario in result["scenarios"]:
        curves = {}
        for (s, model, channel, attack), (values, labels) in groups.items():
            if s == scenario and (model == "target" or channel in (main_channel, "none")):
                name = f"{channel} {attack}" if model == "target" else f"{CONTROL_NAMES[model]} {attack}"
                curves[name] = (np.asarray(values), np.asarray(labels))
        histograms = [
            _data_uri(histogram_figure(np.asarray(values), np.asarray(labels), f"{scenario}: {attack} ({channel})"))
            for (s, model, channel, attack), (values, labels) in groups.items()
            if s == scenario and model == "target" and channel == main_channel
        ]
        figures.append({"scenario": scenario, "roc": _data_uri(roc_figure(curves, f"scenario {scenario}")),
                        "histograms": histograms})  # fmt: skip
    exposed = result.get("exposed") or {}
    exposed_images = [
        {**row, "uri": _image_uri(row["image"]), "score": _fmt(row["score"]),
         "generations": [{**g, "uri": _image_uri(g["image"])} for g in row["generations"]]}
        for row in exposed.get("images", [])
    ]  # fmt: skip
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("diffmia.report", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    rows, notes = _rows(result["results"])
    page = environment.get_template(TEMPLATE).render(
        result=result, rows=rows, notes=notes, fprs=fprs, figures=figures, exposed=exposed,
        exposed_images=exposed_images, json_block=lambda value: json.dumps(value, indent=2),
    )  # fmt: skip
    out = run / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
