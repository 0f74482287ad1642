"""The audit: one numbered recipe from a configuration to a run directory (:func:`run_audit`), each stage a module of
this package, called in the order the recipe reads:

1. :mod:`~diffmia.audit.plan`: validate the configuration and the data (every problem at once, before any model is
   touched), and
2. split: the target's members / non-members, the auxiliary sets D' and every shadow's members / non-members;
3. :mod:`~diffmia.audit.models`: the target (given, or fine-tuned here), the shadows, the base model (a control);
4. :mod:`~diffmia.audit.prompts`: the given captions, or captions from a captioner fine-tuned on D';
5. :mod:`~diffmia.audit.measure`: every query through the cache (resumable; nothing is generated twice), and
6. the features of every answer (embeddings cached), calibrated where configured, the baselines, the blind control;
7. :mod:`~diffmia.audit.scoring`: attacks fitted on the pooled shadow features only, frozen, applied once to the
   target and the controls; each scenario's headline chosen by cross-validation on the shadows before that;
8. :mod:`~diffmia.audit.result`: generation quality, the most exposed members, the result; then the run directory
   is written: features, scores, result.json, report.html.

A run killed at any point restarts where it stopped (finished fine-tunes and captioners, cached generations and
embeddings are reused); rerunning a finished run gives identical numbers and adds its timings to the run's record
of passes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from diffmia.audit.measure import measure
from diffmia.audit.models import build_models
from diffmia.audit.plan import run_dir_of, split, validate
from diffmia.audit.prompts import prepare_prompts
from diffmia.audit.result import StageClock, assemble, most_exposed, rate_generations
from diffmia.audit.scoring import score
from diffmia.config import Config
from diffmia.files import exclusive_lock
from diffmia.report import render_report
from diffmia.results import RunResult, previous_passes, save_features, save_run

log = logging.getLogger(__name__)


def run_audit(config: Config, run_dir: str | Path | None = None, *, show_progress: bool = True) -> RunResult:
    """Run the audit of ``config`` into ``run_dir`` (default ``runs_dir/name``); see the module docstring."""
    run = Path(run_dir) if run_dir is not None else run_dir_of(config)
    clock = StageClock()
    with clock("validate and split"):
        checked = validate(config, run)  # 1. nothing is trained before this passes; config.toml is written
    with exclusive_lock(run, "run directory"):  # a second run of this directory stops here, saying who holds it
        with clock("validate and split"):
            plan = split(checked)  # 2. D' of each relation the scenarios need, every shadow's split: splits.json
        log.info(plan.describe())
        with clock("fine-tune"):
            models = build_models(plan, show_progress)  # 3. the target, the shadows, the base model (a control)
        with clock("captions"):
            prompts = prepare_prompts(plan, show_progress)  # 4. the given captions, or a captioner's on each D'
        with clock("generate and features"):
            measured = measure(plan, models, prompts, show_progress)  # 5-6. every query, every feature
        with clock("attacks and evaluation"):
            scores = score(config, measured)  # 7. fitted on the shadows only, frozen, applied once
        with clock("generation quality"):
            quality = rate_generations(plan, models, measured.cache, show_progress)
        with clock("write"):
            exposed = most_exposed(plan, scores, models.target, prompts, measured.cache)  # 8. the result
            save_features(run, measured.tables)
        passes = (*previous_passes(run), clock.finish())
        result = assemble(plan, models, prompts, measured, scores, quality, exposed, passes)
        save_run(run, result)
        render_report(run)
        return result


__all__ = ["run_audit", "run_dir_of"]
