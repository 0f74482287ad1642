"""The report of ``diffmia provenance``: the verdict first, the test and its controls next, the suspects that weigh
most beside the target's generations, every image's score last; as one self-contained HTML page and as Markdown,
from the saved ``provenance.json`` (:func:`~diffmia.provenance.result.load_provenance`) alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffmia.files import atomic_path
from diffmia.provenance.result import INCONCLUSIVE, NO_EVIDENCE, USED, ProvenanceResult, load_provenance
from diffmia.report import content
from diffmia.report.html import EXPOSED_SIDE, data_uri, image_uri, templates
from diffmia.report.markdown import escape, table
from diffmia.report.plots import histogram_figure

HTML_FILE, MARKDOWN_FILE = "report.html", "report.md"
COLOURS = {USED: "red", NO_EVIDENCE: "green", INCONCLUSIVE: "amber"}
METHOD = (
    "Each test fits a diagonal linear discriminant on all folds but one and scores the held-out fold (cross-fitting); "
    "its statistic is the held-out AUC of the suspects against the references; its p-value counts the random "
    "relabellings of the images, each run through the whole procedure, that reach at least that AUC: valid as "
    "computed, never below 1 / (1 + relabellings). The AUC's interval is a stratified bootstrap of the held-out "
    "scores; 'by chance' is the central 95% of the AUCs the relabellings reach, where a set the model treats like the "
    "references lands (cross-fitting pulls it a little below 0.5)."
)


def rules(result: ProvenanceResult) -> list[str]:
    """The verdict's rules, with this run's levels."""
    return [
        f"{USED.upper()}: the target's test gives p < {result.alpha:g} and neither control gives p < "
        f"{result.control_alpha:g}.",
        f"{INCONCLUSIVE.upper()}: a control gives p < {result.control_alpha:g}: the base model's answers or the "
        "images alone already set the suspects apart (other subjects, style, era, size), so the sets are not "
        "comparable and the target's test cannot be put down to training.",
        f"{NO_EVIDENCE.upper()}: otherwise. The test found nothing at this size; that is no proof of non-use.",
    ]


def _rows(result: ProvenanceResult) -> list[dict[str, str]]:
    return [
        {
            "name": t.name,
            "auc": f"{content.number(t.auc)} [{content.number(t.auc_low)}, {content.number(t.auc_high)}]",
            "chance": f"{content.number(t.chance_low)} to {content.number(t.chance_high)}",
            "p": f"{t.p_value:.3g}",
            "min_p": f"{t.min_p_value:.3g}",
            "features": str(t.features),
            "evidence": t.evidence,
        }
        for t in (result.test, *result.controls)
    ]


def _environment(result: ProvenanceResult) -> list[tuple[str, str]]:
    pairs = content.flatten({"models": result.models, "seeds": result.seeds, "evidence": list(result.evidence)})
    for k, p in enumerate(result.passes):
        pairs += [(f"pass {k + 1} ({p.finished}): {stage}", f"{seconds:.1f} s") for stage, seconds in p.seconds.items()]
    return pairs


def render_page(result: ProvenanceResult) -> str:
    """The HTML page of ``result``."""
    scores = np.array([s.score for s in result.scores])
    labels = np.array([s.suspect for s in result.scores])
    histogram = data_uri(histogram_figure(scores, labels, "held-out scores: suspects against references"))
    weighing = [
        {
            "sample_id": w.sample_id,
            "score": content.number(w.score),
            "prompt": w.prompt,
            "uri": image_uri(w.image, EXPOSED_SIDE),
            "generations": [{"channel": g.channel, "uri": image_uri(g.image, EXPOSED_SIDE)} for g in w.generations],
        }
        for w in result.weighing
    ]
    return (
        templates()
        .get_template("provenance.html.j2")
        .render(
            result=result,
            colour=COLOURS[result.verdict],
            budget=result.budget,
            rules=rules(result),
            tests=_rows(result),
            confidence=95,
            method=METHOD,
            histogram=histogram,
            weighing=weighing,
            scores=[
                {"sample_id": s.sample_id, "suspect": s.suspect, "score": content.number(s.score)}
                for s in result.scores
            ],
            environment=_environment(result),
        )
    )


def render_text(result: ProvenanceResult) -> str:
    """The Markdown report of ``result`` (no images)."""
    tests = [
        [r["name"], r["auc"], r["chance"], r["p"], r["min_p"], r["features"], r["evidence"]] for r in _rows(result)
    ]
    out = [
        f"# Provenance: {escape(result.name)}",
        "",
        f"**{result.verdict.upper()}**: {escape(result.reason)}.",
        "",
        f"{escape(result.budget)}.",
        "",
        *(f"- {rule}" for rule in rules(result)),
        "",
        "## The test and its controls",
        "",
        table(
            [
                "test",
                "held-out AUC [95% CI]",
                "by chance",
                "p-value",
                "smallest reachable p",
                "features",
                "what it reads",
            ],
            tests,
            ["l", "r", "r", "r", "r", "r", "l"],
        ),
        "",
        escape(METHOD),
        "",
    ]
    if result.weighing:
        rows = [[w.sample_id, content.number(w.score), w.prompt] for w in result.weighing]
        out += ["## The suspects that weigh most", "", table(["suspect", "held-out score", "prompt"], rows), ""]
    scores = [[s.sample_id, "suspect" if s.suspect else "reference", content.number(s.score)] for s in result.scores]
    out += ["## Every image's held-out score", "", table(["id", "set", "score"], scores, ["l", "l", "r"]), ""]
    out += ["## Models, seeds, timings", "", table(["setting", "value"], _environment(result)), ""]
    return "\n".join(out)


def render_provenance(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` of a provenance run directory; return their paths."""
    result = load_provenance(run_dir)
    run = Path(run_dir)
    for name, text in ((HTML_FILE, render_page(result)), (MARKDOWN_FILE, render_text(result))):
        with atomic_path(run / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return run / HTML_FILE, run / MARKDOWN_FILE
