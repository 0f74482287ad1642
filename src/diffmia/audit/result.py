"""Stage 8 of an audit: what it reports beside the scores (generation quality where the data can tell, the members
the target leaks most), the seconds of each stage, and the :class:`~diffmia.results.RunResult` assembled from all of
it with the regimes, seeds and versions that produced it."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from diffmia.audit.measure import Measurements
from diffmia.audit.models import AuditModels, Model, base_model
from diffmia.audit.plan import AuditPlan
from diffmia.audit.prompts import Prompts
from diffmia.audit.quality import digit_quality
from diffmia.audit.scoring import Scores
from diffmia.cache import GenerationCache
from diffmia.config import Config
from diffmia.names import Role
from diffmia.queries import build_queries
from diffmia.records import Sample
from diffmia.report.verdict import control_warnings
from diffmia.results import (
    HEADLINE_RULE,
    DataSummary,
    ExposedImage,
    Exposure,
    GeneratedImage,
    HeadlineCandidate,
    Pass,
    Quality,
    RunResult,
    shadow_headline_rule,
)
from diffmia.scenarios import SCENARIOS
from diffmia.versions import __version__, package_versions


class StageClock:
    """Seconds per stage of one pass, in the order the stages ran."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def finish(self) -> Pass:
        total = {**self.seconds, "total (before the report)": time.perf_counter() - self.began}
        return Pass(time.strftime("%Y-%m-%d %H:%M:%S %Z"), {k: round(v, 1) for k, v in total.items()})


def rate_generations(
    plan: AuditPlan, models: AuditModels, cache: GenerationCache, show_progress: bool = True
) -> dict[str, Quality]:
    """Generation quality where the data can tell (the bundled digits), of the target, the base model and the
    shadows' own base model when it is another."""
    config = plan.config
    if not config.data.builtin:
        return {}
    rated = [models.target, models.base] if config.audit.base_control else [models.target]
    other = config.audit.shadow_base_model
    if other is not None and other != config.audit.base_model:
        rated.append(base_model(config.audit, config.target, "shadow-base", other))
    digits = plan.run / "data" / "digits"
    return digit_quality(config.generation, digits, rated, plan.data.nonmembers, cache, show_progress)


def most_exposed(
    plan: AuditPlan, scores: Scores, target: Model, prompts: Prompts, cache: GenerationCache
) -> Exposure | None:
    """The members the target leaks most by the first scenario's headline score set, highest scores first (fixed
    before the target was scored: the rule that chose the headline looks at the shadows only)."""
    config, split = plan.config, plan.data.split
    if config.audit.exposed == 0:
        return None
    scenario = plan.scenarios[0].name
    key = (scenario, str(Role.TARGET), *scores.headline[scenario])
    (chosen,) = [s for s in scores.score_sets if (s.scenario, s.model, s.channel, s.attack) == key]
    by_id = {s.id: s for s in split.members}
    source, fingerprint = SCENARIOS[chosen.scenario].prompt_source, target.target.fingerprint
    rows = []
    for index in np.argsort(-chosen.scores, kind="stable"):
        sample = by_id.get(chosen.sample_ids[index])
        if sample is None:
            continue
        score = float(chosen.scores[index])
        rows.append(exposed_image(sample, score, prompts.get_all(source, [sample])[0], config, fingerprint, cache))
        if len(rows) == config.audit.exposed:
            break
    return Exposure(chosen.scenario, chosen.channel, chosen.attack, tuple(rows))


def exposed_image(
    sample: Sample, score: float, prompts: list[str], config: Config, fingerprint: str, cache: GenerationCache
) -> ExposedImage:
    """A candidate beside the target's generations for it (the cache's files of its queries): several prompts
    (captions per image) shown as one."""
    generations = tuple(
        GeneratedImage(q.mode, str(cache.image_path(q.key(fingerprint)).resolve()))
        for q in build_queries([sample], [prompts], config.generation)
    )
    return ExposedImage(sample.id, str(Path(sample.image_path).resolve()), " | ".join(prompts), score, generations)


def assemble(
    plan: AuditPlan,
    models: AuditModels,
    prompts: Prompts,
    measured: Measurements,
    scores: Scores,
    quality: dict[str, Quality],
    exposed: Exposure | None,
    passes: tuple[Pass, ...],
) -> RunResult:
    """The run's result: everything it reports, with the regimes, seeds and versions that produced it."""
    config, data = plan.config, plan.data
    audit, attacks = config.audit, config.attacks
    rule = shadow_headline_rule(attacks.headline_fpr, attacks.headline_folds) if attacks.headline == "shadow" else None
    return RunResult(
        name=audit.name,
        diffmia_version=__version__,
        machine=platform.platform(),
        versions=package_versions(),
        data=DataSummary(
            data.source, len(data.members), len(data.nonmembers), len(data.pool), 2 * plan.shadow_members, audit.overlap
        ),
        scenarios=tuple(s.name for s in plan.scenarios),
        channels=tuple(config.generation.query_channels()),
        queries_per_image=config.generation.queries_per_image,
        generation=config.generation.model_dump(mode="json"),
        seeds=_seeds(config),
        models=models.regimes(),
        captioners=prompts.cards,
        images_requested=dict(measured.images_requested),
        generation_quality=quality,
        warnings=tuple(control_warnings(scores.score_sets)),
        exposed=exposed,
        headline=scores.headline,
        passes=passes,
        score_sets=scores.score_sets,
        run_dir=plan.run,
        candidate_images={s.id: str(Path(s.image_path).resolve()) for s in data.split.samples},
        headline_rule=rule or HEADLINE_RULE,
        headline_validation=_candidates(scores),
    )


def _seeds(config: Config) -> dict[str, int]:
    return {
        "audit": config.audit.seed,
        "data": config.data.seed,
        "generation": config.generation.seed,
        "finetune": config.finetune.seed,
        "evaluation": config.evaluation.seed,
    }


def _candidates(scores: Scores) -> dict[str, list[HeadlineCandidate]]:
    """Per scenario with a shadow-chosen headline, every (channel, attack) it was chosen among."""
    return {
        scenario: [
            HeadlineCandidate(c, a, round(v.auc, 6), round(v.tpr, 6) if np.isfinite(v.tpr) else None, v.fpr, v.folds)
            for (c, a), v in validation.items()
        ]
        for scenario, validation in scores.validation.items()
        if validation
    }
