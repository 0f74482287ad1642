"""``report.html``: one self-contained page (figures and images inline), rendered by Jinja2 with autoescape.

The run is read through :func:`diffmia.results.load_run` only, so ``diffmia report RUN_DIR`` renders the same page
again without any model. The page leads with the verdict (:mod:`diffmia.report.verdict`); a Content-Security-Policy
forbids every script, and autoescape keeps captions, ids and model cards inert text.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffmia.errors import DataError
from diffmia.files import atomic_path
from diffmia.images import load_rgb
from diffmia.report import content
from diffmia.report.plots import histogram_figure, loglog_roc_figure
from diffmia.report.verdict import COLOURS, CONTROL_RULE, RULES, verdicts
from diffmia.results import RunResult, load_run

if TYPE_CHECKING:
    import jinja2

TEMPLATE = "report.html.j2"
REPORT_FILE = "report.html"
EXPOSED_SIDE = 192  # largest side of an exposed member or generation as embedded (pixels)
THUMBNAIL_SIDE = 48


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_uri(path: str, side: int) -> str | None:
    """An image file as a PNG data URI no larger than ``side``, or None when it is gone or cannot be decoded (the
    page says so)."""
    try:
        image = load_rgb(path)
    except DataError:
        return None
    if max(image.size) > side:
        image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def _anchor(sample_id: str) -> str:
    """An HTML id for a candidate's row (``report.html#candidate-ID``): whitespace and odd characters as ``_``."""
    return "candidate-" + re.sub(r"[^A-Za-z0-9_.:-]", "_", sample_id)


def _figures(run: RunResult) -> list[dict[str, Any]]:
    """Per scenario: the headline log-log ROC beside its controls, and the target's score histograms."""
    figures = []
    first_fpr = content.fprs(run)[0] if content.fprs(run) else None
    for scenario in run.scenarios:
        target = run.headline_set(scenario) if scenario in run.headline else None
        roc = None
        if target is not None:
            curves = {"target": (target.scores, target.labels)}
            curves.update(
                {content.MODEL_NAMES.get(s.model, s.model): (s.scores, s.labels) for s in run.controls(scenario)}
            )
            title = f"Scenario {scenario}: {target.channel} {target.attack}"
            roc = data_uri(loglog_roc_figure(curves, title, first_fpr))
        channel = run.headline[scenario][0] if scenario in run.headline else None
        histograms = [
            data_uri(histogram_figure(s.scores, s.labels, f"{scenario}: {s.attack} ({s.channel})"))
            for s in run.score_sets
            if s.scenario == scenario and s.model == "target" and s.channel == channel
        ]
        figures.append({"scenario": scenario, "roc": roc, "histograms": histograms})
    return figures


def _exposed(run: RunResult) -> list[dict[str, Any]]:
    if run.exposed is None:
        return []
    return [
        {
            "sample_id": i.sample_id,
            "prompt": i.prompt,
            "score": content.number(i.score),
            "uri": image_uri(i.image, EXPOSED_SIDE),
            "generations": [{"channel": g.channel, "uri": image_uri(g.image, EXPOSED_SIDE)} for g in i.generations],
        }
        for i in run.exposed.images
    ]


def _candidates(run: RunResult) -> dict[str, Any] | None:
    """The first scenario's headline score set, one row per candidate in id order."""
    if not run.scenarios or run.scenarios[0] not in run.headline:
        return None
    chosen = run.headline_set(run.scenarios[0])
    if chosen is None:
        return None
    images = {i.sample_id: i.image for i in run.exposed.images} if run.exposed else {}
    images.update(run.candidate_images)
    rows = [
        {
            "id": c.sample_id,
            "anchor": _anchor(c.sample_id),
            "score": content.number(c.score),
            "rank": c.rank,
            "truth": c.truth,
            "called": c.called,
            "wrong": c.decision is not None and c.decision != c.member,
            "known": c.sample_id in images,
            "uri": image_uri(images[c.sample_id], THUMBNAIL_SIDE) if c.sample_id in images else None,
        }
        for c in content.candidates(chosen)
    ]
    return {"set": chosen, "rows": rows, "threshold": chosen.evaluation.threshold}


def templates() -> jinja2.Environment:
    """The report templates (autoescaped: captions, ids and model cards stay inert text)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("diffmia.report", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )


def render_page(run: RunResult) -> str:
    """The page of ``run``."""
    judged = verdicts(run)
    rows, notes = content.evaluation_rows(run)
    timing_headers, timing_rows = content.timings(run)
    confidence = run.score_sets[0].evaluation.auc_interval.confidence if run.score_sets else 0.95
    return (
        templates()
        .get_template(TEMPLATE)
        .render(
            run=run,
            verdicts=judged,
            rules=RULES,
            colours=COLOURS,
            control_rule=CONTROL_RULE,
            rows=rows,
            notes=notes,
            fprs=content.fprs(run),
            percent=lambda v: f"{v * 100:g}%",
            confidence=round(confidence * 100),
            figures=_figures(run),
            exposed=_exposed(run),
            candidates=_candidates(run),
            headlines={s: content.headline_rows(run, s) for s in run.scenarios},
            choices={s: content.headline_choice(run, s) for s in run.scenarios},
            cards=[
                (title, *content.side_by_side(group))
                for title, group in (("Training regimes", run.models), ("Captioners", run.captioners))
                if group
            ],
            environment=content.environment(run),
            timing_headers=timing_headers,
            timing_rows=timing_rows,
        )
    )


def render_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the run's saved results; return its path."""
    run = load_run(run_dir)
    out = Path(run_dir) / REPORT_FILE
    page = render_page(run)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
