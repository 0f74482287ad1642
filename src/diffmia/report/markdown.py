"""``report.md``: the report as Markdown, for a pull request, a ticket or a terminal (no images).

The same verdict as the HTML page (tags as words), the headline table of every scenario (target and controls), the
most exposed members, the full evaluation table and the training regimes. Every value from the run is escaped, so a
caption or id can neither break a table nor become HTML or a link where the Markdown is rendered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from diffmia.files import atomic_path
from diffmia.report import content
from diffmia.report.verdict import CONTROL_RULE, RULES, verdicts
from diffmia.results import RunResult, load_run

REPORT_FILE = "report.md"
_SPECIAL = re.compile(r"([\\`*<>|&]|(?<=\])\()")  # "](" would open a link; "[" alone never does


def escape(text: object) -> str:
    """``text`` as literal Markdown inline text, safe in a table cell: punctuation that could start markup (HTML,
    entities, links, emphasis, code, a cell's end) backslash-escaped, line breaks as spaces. No escaped text starts
    a line, so it cannot define a link reference either."""
    return _SPECIAL.sub(r"\\\1", re.sub(r"\s*[\r\n]+\s*", " ", str(text)))


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; every cell escaped (``align``: "l" or "r" per column)."""
    align = align or ["l"] * len(header)
    lines = [
        "| " + " | ".join(escape(h) for h in header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _evaluation_table(rows: Sequence[content.EvaluationRow], fprs: Sequence[float], scenario: bool) -> str:
    header = [
        *(["scenario"] if scenario else []),
        "model",
        "channel",
        "attack",
        "AUC [CI]",
        *(f"TPR @ {f * 100:g}% FPR" for f in fprs),
        "balanced accuracy",
        "members / non-members",
    ]
    body = []
    for r in rows:
        cells = [
            r.model,
            r.channel,
            r.attack,
            f"{r.auc.value} {r.auc.detail}",
            *(f"{t.value} ({t.detail})" if t.detail else t.value for t in r.tprs),
            r.balanced_accuracy,
            r.counts,
        ]
        if r.headline:
            cells[0] = f"{cells[0]} (headline)"
        body.append([r.scenario, *cells] if scenario else cells)
    align = ["l"] * (4 if scenario else 3) + ["r"] * (len(header) - (4 if scenario else 3))
    return table(header, body, align)


def render_text(run: RunResult) -> str:
    """The Markdown report of ``run``."""
    judged = verdicts(run)
    fprs = content.fprs(run)
    out = [
        f"# Membership audit: {escape(run.name)}",
        "",
        f"Does the fine-tuned target leak which images it was trained on? A black-box membership-inference audit of "
        f"{escape(run.data.source)}, finished {escape(run.finished)} with diffmia {escape(run.diffmia_version)}.",
        "",
        "## Verdict",
        "",
        f"**{escape(judged.overall)}**",
        "",
    ]
    out += [
        table(["tag", "scenario", "verdict"], [[v.tag.upper(), v.scenario, v.sentence] for v in judged.scenarios]),
        "",
        f"{escape(judged.budget)}.",
        "",
        "How to read the tags:",
        "",
    ]
    out += [f"- **{name.upper()}**: {rule}." for name, rule in RULES]  # the rules are ours: no escaping
    out += [
        f"- Controls: {CONTROL_RULE}.",
        f"- Each scenario is read on its headline attack on the target, by a rule {escape(run.headline_rule)}.",
        "",
    ]
    if run.warnings:
        out += ["## Warnings", "", *(f"- {escape(w)}" for w in run.warnings), ""]
    out += ["## Headline results", ""]
    for scenario, verdict in zip(run.scenarios, judged.scenarios, strict=True):
        rows = content.headline_rows(run, scenario)
        title = f"### Scenario {escape(scenario)}" + (
            f" ({escape(verdict.description)})" if verdict.description else ""
        )
        out += [title + f": {escape(verdict.channel)} {escape(verdict.attack)}", ""]
        choice = content.headline_choice(run, scenario)
        out += [f"The headline was {escape(choice)}.", ""] if choice else []
        out += [_evaluation_table(rows, fprs, scenario=False) if rows else "No headline score set.", ""]
    if run.exposed is not None and run.exposed.images:
        e = run.exposed
        out += [
            "## Most exposed members",
            "",
            f"Ranked by the {escape(e.attack)} attack of scenario {escape(e.scenario)} ({escape(e.channel)} "
            "features), the first scenario's headline, fixed before the target was scored.",
            "",
            table(
                ["rank", "id", "score", "prompt"],
                [[k + 1, i.sample_id, content.number(i.score), i.prompt] for k, i in enumerate(e.images)],
                ["r", "l", "r", "l"],
            ),
            "",
        ]
    rows, notes = content.evaluation_rows(run)
    out += ["## Full evaluation", "", _evaluation_table(rows, fprs, scenario=True), ""]
    out += [f"- n/a: {escape(note)}" for note in notes] + ([""] if notes else [])
    for title, cards in (("Training regimes", run.models), ("Captioners", run.captioners)):
        if cards:
            names, pairs = content.side_by_side(cards)
            out += [f"## {title}", "", table(["setting", *names], [[key, *values] for key, values in pairs]), ""]
    out += ["## Seeds, versions, machine", "", table(["setting", "value"], content.environment(run)), ""]
    headers, timing_rows = content.timings(run)
    out += [
        "## Timings of every pass (seconds)",
        "",
        table(["stage", *headers], [[stage, *values] for stage, values in timing_rows], ["l"] + ["r"] * len(headers)),
        "",
    ]
    return "\n".join(out)


def render_markdown(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` from the run's saved results; return its path."""
    run = load_run(run_dir)
    out = Path(run_dir) / REPORT_FILE
    text = render_text(run)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
