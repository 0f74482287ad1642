"""Studies (``diffmia study STUDY.toml``): audits that vary one factor at a time from one base configuration.

Every run of every study under one ``runs_dir`` shares one generation cache (``<runs_dir>/cache``) and one
content-keyed model store (``<runs_dir>/models``, ``audit.models_dir``), so levels that need the same model or the
same images reuse them: a factor of features or attacks costs no generation, a factor of sampling or queries costs
no fine-tune, and a level whose configuration equals an earlier one is not run twice. Each run is an ordinary run
directory under ``<runs_dir>/<study>/runs/``; the study adds ``study.json`` (every evaluation of
every run) and, per factor, a Markdown table and a plot of AUC against the factor's levels. Tables show each
run's headline score set (chosen on shadow data before the target is scored, never by the target's results).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffmia.assets import DEMO_PRESETS
from diffmia.audit import run_audit
from diffmia.audit.models import check_model_sources
from diffmia.config import UNSET, Config, StudyConfig, dump_config, load_config, parse_config
from diffmia.errors import ConfigError, TargetError
from diffmia.files import atomic_path
from diffmia.results import RunResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRun:
    """One level of one factor: the audit configuration it runs."""

    factor: str
    label: str
    value: Any
    config: Config


def study_dir(study: StudyConfig) -> Path:
    return Path(study.study.runs_dir) / study.study.name


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "level"


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is a setting, not a section")
        tree = child
    if value == UNSET:
        tree.pop(leaf, None)
    else:
        tree[leaf] = copy.deepcopy(value)


def plan_study(study: StudyConfig) -> list[StudyRun]:
    """Every run's configuration, validated before anything runs (all problems in one ConfigError)."""
    settings = study.study
    presets = {"demo": DEMO_PRESETS["standard"], "demo-realistic": DEMO_PRESETS["realistic"]}
    base = load_config(presets.get(settings.base, settings.base))
    root = study_dir(study).resolve()
    shared = root.parent  # every study under one runs_dir shares its models and generations
    runs, problems = [], []
    for factor in settings.factors:
        for value, label in zip(factor.values, factor.level_labels, strict=True):
            tree = base.model_dump(mode="json", exclude_none=True)
            try:
                for key, fixed in settings.fixed.items():
                    _set(tree, key, fixed)
                for key, setting in factor.settings(value).items():
                    _set(tree, key, setting)
                _set(tree, "audit.name", f"{slug(factor.name)}-{slug(label)}")
                _set(tree, "audit.runs_dir", str(root / "runs"))
                _set(tree, "audit.models_dir", str(shared / "models"))
                _set(tree, "generation.cache", str(shared / "cache"))
                runs.append(StudyRun(factor.name, label, value, parse_config(tree, f"{factor.name} = {label}")))
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError("the study's runs are not valid audits: " + " | ".join(problems))
    return runs


def _same_audit(config: Config) -> str:
    """A configuration without where it runs: two levels with equal keys are one audit."""
    return dump_config(config.model_copy(update={"audit": config.audit.model_copy(update={"name": "-"})}))


def run_study(study: StudyConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Run every level of every factor (resuming finished runs); write study.json, tables and plots."""
    runs = plan_study(study)
    missing = []
    for run in runs:  # a model folder missing at the last level is reported before the first level runs
        try:
            check_model_sources(run.config)
        except TargetError as exc:
            missing.append(f"{run.factor} = {run.label}: {exc}")
    if missing:
        raise TargetError("the study's models are not all there: " + " | ".join(missing))
    root = study_dir(study)
    done: dict[str, RunResult] = {}
    records = []
    for i, run in enumerate(runs, 1):
        key = _same_audit(run.config)
        if key in done:
            log.info(f"[{i}/{len(runs)}] {run.factor} = {run.label}: the same audit as {done[key].run_dir}")
        else:
            log.info(f"[{i}/{len(runs)}] {run.factor} = {run.label}")
            done[key] = run_audit(run.config, show_progress=show_progress)
        result = done[key]
        saved = result.to_dict()
        records.append(
            {
                "factor": run.factor,
                "level": run.label,
                "value": run.value,
                "run_dir": str(result.run_dir),
                "headline": {s: list(result.headline[s]) for s in result.scenarios},
                "generation_quality": saved["generation_quality"],
                "passes": saved["passes"],
                "results": saved["results"],
            }
        )
    output = {"study": study.model_dump(mode="json"), "runs": records}
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / "study.json") as tmp:
        tmp.write_text(json.dumps(output, indent=1) + "\n", encoding="utf-8")
    for factor in study.study.factors:
        rows = [r for r in records if r["factor"] == factor.name]
        with atomic_path(root / f"{slug(factor.name)}.md") as tmp:
            tmp.write_text(factor_table(factor.name, rows), encoding="utf-8")
        with atomic_path(root / f"{slug(factor.name)}.png") as tmp:
            tmp.write_bytes(factor_figure(factor.name, rows))
    return output


def _headline_result(record: dict[str, Any], scenario: str, model: str = "target") -> dict[str, Any] | None:
    channel, attack = record["headline"][scenario]
    for r in record["results"]:
        if (r["scenario"], r["model"], r["channel"], r["attack"]) == (scenario, model, channel, attack):
            evaluation: dict[str, Any] = r["evaluation"]
            return evaluation
    return None


def factor_table(name: str, records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per level; per scenario the headline AUC [95% CI] and TPR at the first FPR; the base
    model's headline AUC; the target's generation quality where measured (and the base model's, when it is one,
    and that of the shadows' own base model where it differs)."""
    scenarios = list(dict.fromkeys(s for r in records for s in r["headline"]))
    quality = any(r["generation_quality"].get("target") for r in records)
    head = ["level", *(f"{s}: AUC [95% CI], TPR@low FPR" for s in scenarios), "base-model control AUC"]
    if quality:
        head += ["digit accuracy", "Fréchet distance (classifier logits)"]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for record in records:
        cells = [record["level"]]
        controls = []
        for scenario in scenarios:
            ev = _headline_result(record, scenario)
            if ev is None:
                cells.append("-")
                continue
            tpr = ev["tpr_at_fpr"][0]
            rate = "n/a" if tpr["tpr"] is None else f"{tpr['tpr']:.2f}"
            ci = ev["auc_interval"]
            cells.append(f"{ev['auc']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}], {rate}")
            base = _headline_result(record, scenario, "base")
            if base is not None:
                controls.append(base["auc"])
        span = sorted({f"{c:.3f}" for c in controls})
        cells.append(" to ".join(dict.fromkeys([span[0], span[-1]])) if span else "-")
        if quality:
            target = record["generation_quality"].get("target", {})
            cells += [
                f"{target['digit_accuracy']:.3f}" if target else "-",
                f"{target['frechet_distance']:.2f}" if target else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    bases = {
        json.dumps(r["generation_quality"]["base"], sort_keys=True)
        for r in records
        if r["generation_quality"].get("base")
    }
    if quality and len(bases) == 1:
        base = json.loads(bases.pop())
        lines += [
            "",
            f"The un-fine-tuned base model: digit accuracy {base['digit_accuracy']:.3f}, Fréchet distance "
            f"{base['frechet_distance']:.2f} ({base['generations']} generations).",
        ]
    for record in records:
        other = record["generation_quality"].get("shadow-base")
        if other:
            lines += [
                "",
                f'The shadows\' own base model, not fine-tuned, at level "{record["level"]}": digit '
                f"accuracy {other['digit_accuracy']:.3f}, Fréchet distance {other['frechet_distance']:.2f} "
                f"({other['generations']} generations).",
            ]
    channels = sorted({f"{c}/{a}" for r in records for c, a in r["headline"].values()})
    lines += [
        "",
        f"Headline score set of each run (chosen before the target was scored): {', '.join(channels)}; "
        "all: study.json.",
        "",
    ]
    return "\n".join(lines)


def factor_figure(name: str, records: Sequence[dict[str, Any]]) -> bytes:
    """AUC of each scenario's headline attack against the factor's levels, with 95% intervals."""
    from diffmia.report.plots import levels_figure

    scenarios = list(dict.fromkeys(s for r in records for s in r["headline"]))
    series = {}
    for scenario in scenarios:
        found = [_headline_result(r, scenario) for r in records]
        series[f"scenario {scenario}"] = [
            None if ev is None else (ev["auc"], ev["auc_interval"]["low"], ev["auc_interval"]["high"]) for ev in found
        ]
    return levels_figure(name, [r["level"] for r in records], series)
