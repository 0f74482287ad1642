"""The report in a terminal: an audit ends with its verdict (a line overall, a sentence per scenario, the counts and
the query budget), its warnings and where the report is; the full evaluation table on request (``--table``). Built
from the rows of :mod:`diffmia.report.content`, as the HTML and Markdown reports are."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping

from rich import box
from rich.console import Console
from rich.table import Table

from diffmia.provenance.result import ProvenanceResult
from diffmia.records import Evaluation, Interval
from diffmia.report import content
from diffmia.report.verdict import percent, verdicts
from diffmia.results import RunResult
from diffmia.settest import METHOD, SetTestReport


def _console(width: int) -> Console:
    """Standard output, as wide as the terminal, or ``width`` columns where it is no terminal (a log, a pipe)."""
    return Console(width=None if sys.stdout.isatty() else width, markup=False, highlight=False)


def print_run(run: RunResult, *, table: bool = False) -> None:
    """The verdict of ``run``; with ``table``, every score set of the run below it; then the run's warnings."""
    console = _console(140)
    judged = verdicts(run)
    wrap = textwrap.TextWrapper(width=min(console.width, 120), break_on_hyphens=False, subsequent_indent="    ")
    console.print(wrap.fill(f"Verdict: {judged.overall}"), soft_wrap=True)
    for verdict in judged.scenarios:
        wrap.initial_indent = f"  [{verdict.tag.upper()}] "
        console.print(wrap.fill(verdict.sentence), soft_wrap=True)
    wrap.initial_indent = "  "
    console.print(wrap.fill(f"{judged.budget}."), soft_wrap=True)
    if table and run.score_sets:
        _print_score_sets(console, run)
    for warning in run.warnings:
        console.print(f"Warning: {warning}")


def _print_score_sets(console: Console, run: RunResult) -> None:
    """scenario x model x channel x attack: AUC [CI], TPR at each FPR with the FPR achieved, counts."""
    rows, notes = content.evaluation_rows(run)
    table = Table(
        title=f"Audit {run.name}: attacks fitted on shadow models, applied once to the target",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("scenario", "model", "channel", "attack"):
        table.add_column(column, no_wrap=True)
    table.add_column("AUC [95% CI]", justify="right", no_wrap=True)
    for fpr in content.fprs(run):
        table.add_column(f"TPR@{percent(fpr)}FPR (FPR)", justify="right", no_wrap=True)
    table.add_column("bal.acc.", justify="right", no_wrap=True)
    table.add_column("mem/non", justify="right", no_wrap=True)
    previous = None
    for row, score_set in zip(rows, run.score_sets, strict=True):
        if previous is not None and previous != row.scenario:
            table.add_section()
        previous = row.scenario
        tprs = [_tpr(t.tpr, t.achieved_fpr) for t in score_set.evaluation.tpr_at_fpr]
        model = f"{score_set.model} *" if row.headline else score_set.model
        auc = f"{row.auc.value} {row.auc.detail}"
        table.add_row(row.scenario, model, row.channel, row.attack, auc, *tprs, row.balanced_accuracy, row.counts)
    console.print(table)
    console.print(
        f"* the scenario's headline. {run.queries_per_image} generation(s) per image and channel; models 'base' and "
        "'blind' are controls (un-fine-tuned base model; query images alone) and should sit near AUC 0.5. "
        "Channel 'none': caption-free baselines and the blind control; 'weights': gray-box baselines (they read the "
        "model's weights)."
    )
    for note in notes:
        console.print(f"n/a: {note}")


def _tpr(tpr: float, achieved: float) -> str:
    return "n/a" if content.number(tpr) == "n/a" else f"{content.number(tpr)} ({content.number(achieved)})"


def _beneath(interval: Interval | None) -> str:
    """An interval printed on the line under its number ("" where it is undefined)."""
    if interval is None or content.number(interval.low) == "n/a":
        return ""
    return f"\n{content.number(interval.low)}-{content.number(interval.high)}"


def print_evaluations(evaluations: Mapping[str, Evaluation], title: str) -> None:
    """One row per score column: each number with its interval beneath it; reasons for any n/a below."""
    first = next(iter(evaluations.values()))
    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("scores")
    table.add_column("AUC", justify="right", no_wrap=True)
    for record in first.tpr_at_fpr:
        table.add_column(f"TPR@{percent(record.target_fpr)} FPR", justify="right", no_wrap=True)
    threshold = "" if first.threshold is None else f"\n(score >= {first.threshold:g})"
    table.add_column(f"balanced\naccuracy{threshold}", justify="right", no_wrap=True)
    table.add_column("members /\nnon-members", justify="right")
    notes: dict[str, None] = {}
    for name, ev in evaluations.items():
        cells = [name, content.number(ev.auc) + _beneath(ev.auc_interval)]
        for record in ev.tpr_at_fpr:
            if record.reason:
                notes[record.reason] = None
                cells.append("n/a")
            else:
                achieved = content.number(record.achieved_fpr, 4)
                cells.append(f"{content.number(record.tpr)}{_beneath(record.interval)}\nFPR {achieved}")
        cells.append(content.number(ev.balanced_accuracy) + _beneath(ev.balanced_accuracy_interval))
        cells.append(f"{ev.n_members} / {ev.n_nonmembers}")
        table.add_row(*cells)
    console = _console(110)
    console.print(table)
    console.print(
        f"low-high: {first.auc_interval.confidence:.0%} intervals, stratified bootstrap with "
        f"{first.n_bootstrap} resamples, seed {first.seed}. TPR@FPR: the best ROC point whose FPR does not "
        "exceed the target, with the FPR it achieves.",
    )
    for note in notes:
        console.print(f"n/a: {note}")
    if first.threshold is None:
        console.print("n/a: balanced accuracy needs --threshold, chosen without these labels.")


def print_set_test(report: SetTestReport) -> None:
    """One candidate set's test in one line, or the curve over set sizes as a table."""
    console = _console(140)
    where = f"scenario {report.scenario}, channel {report.channel}, attack {report.attack}"
    if report.test is not None:
        test = report.test
        console.print(
            f"Set test of {test.k} candidate(s) ({report.candidates}) against {test.n_reference} reference "
            f"non-members ({where}): AUC {test.auc:.3f}, p = {test.p_value:.3g} ({METHOD})"
        )
        return
    if report.curve is None:
        return
    table = Table(
        title=f"Set test against the remaining non-members ({where}); {report.curve.repeats} seeded sets per row",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("k", "references", "members: median p", "share p<0.001", "non-members: median p", "share p>0.05"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in report.curve.rows():
        values = list(row.values())
        table.add_row(str(values[0]), str(values[1]), *(f"{v:.3g}" for v in values[2:]))
    console.print(table)
    console.print(
        f"{METHOD}; a member set is detected at p < 0.001; a non-member set should give p > 0.05 in about 95% of draws."
    )


def print_provenance(result: ProvenanceResult) -> None:
    """The owner's verdict, the test that decided it and its controls, and the query budget."""
    console = _console(140)
    wrap = textwrap.TextWrapper(width=min(console.width, 120), break_on_hyphens=False, subsequent_indent="    ")
    console.print(wrap.fill(f"Verdict: {result.verdict.upper()}: {result.reason}."), soft_wrap=True)
    for test in (result.test, *result.controls):
        interval = f"[{content.number(test.auc_low)}, {content.number(test.auc_high)}]"
        wrap.initial_indent = f"  {test.name}: "
        chance = f"{content.number(test.chance_low)} to {content.number(test.chance_high)}"
        auc = f"held-out AUC {content.number(test.auc)} {interval} (by chance {chance})"
        line = f"{auc}, p = {test.p_value:.3g} ({test.evidence})"
        console.print(wrap.fill(line), soft_wrap=True)
    wrap.initial_indent = "  "
    console.print(wrap.fill(f"{result.budget}."), soft_wrap=True)
