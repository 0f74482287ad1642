"""``diffmia provenance``: was this model trained on my images? One recipe (:func:`run_provenance`):

1. validate the two folders, the target, the base model and the captioner, before any query
   (:mod:`diffmia.provenance.plan`);
2. prompts: the given captions, or the captioner's (used as it is: there is no auxiliary set to fine-tune it on);
3. measure: every image queried on the target and on the base model exactly as an audit queries it (the same
   channels, seeds and prompts, through the generation cache: resumable, and shared with audits of the same
   target), the features with their base-calibrated twins; with the target's weights at hand, the denoising loss;
4. test: the cross-fitted permutation test (:mod:`diffmia.provenance.crossfit`) on the target's features, and the
   same test on the base model's features and on the images alone (the controls);
5. the verdict, the images that weigh most, ``provenance.json`` and the report (``report.html``, ``report.md``).

No shadow model is trained. The verdict is "used" when the target's test gives p < alpha and no control strays,
"inconclusive" when a control gives p < control_alpha (the suspects and references differ in a way the base model
or the images alone already show), else "no evidence of use".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmia.assets import resolve_captioner
from diffmia.attacks.baselines import graybox_scores
from diffmia.audit.measure import Queries
from diffmia.audit.prompts import Prompts
from diffmia.audit.result import StageClock, exposed_image
from diffmia.captioners import BlipCaptioner
from diffmia.config import ProvenanceFile
from diffmia.families import family_of
from diffmia.features import blind_features
from diffmia.files import exclusive_lock
from diffmia.images import load_rgb
from diffmia.names import WEIGHTS, PromptSource, Reference, against, in_channel
from diffmia.provenance.crossfit import crossfit_test
from diffmia.provenance.plan import ProvenancePlan, run_dir_of, validate
from diffmia.provenance.result import (
    INCONCLUSIVE,
    NO_EVIDENCE,
    USED,
    Finding,
    ImageScore,
    ProvenanceResult,
    Verdict,
    save_provenance,
)
from diffmia.records import FeatureTable, FloatArray
from diffmia.report.provenance import render_provenance
from diffmia.results import ExposedImage
from diffmia.versions import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measured:
    """The features each test reads: the target's answers, the base model's, and the images alone; with the
    images asked of each model and the evidence the target's features hold, in words."""

    target: FeatureTable
    base: FeatureTable
    blind: FeatureTable
    images_requested: dict[str, int]
    evidence: tuple[str, ...]
    queries: Queries


def run_provenance(
    file: ProvenanceFile, run_dir: str | Path | None = None, *, show_progress: bool = True
) -> ProvenanceResult:
    """Answer the owner's question of ``file`` into ``run_dir`` (default ``runs_dir/name``); see the module."""
    run = Path(run_dir) if run_dir is not None else run_dir_of(file)
    clock = StageClock()
    with clock("validate"):
        plan = validate(file, run)  # 1. nothing is queried before this passes; config.toml is written
    with exclusive_lock(run, "run directory"):
        log.info(
            f"provenance: {len(plan.suspects)} suspects, {len(plan.references)} references; prompts "
            f"{', '.join(plan.sources)}; base model {plan.base.spec['model']}"
        )
        with clock("prompts"):
            prompts = _prompts(plan)  # 2. the given captions, or the captioner's
        with clock("generate and features"):
            measured = measure(plan, prompts, show_progress)  # 3. every image on the target and the base model
        with clock("tests"):
            target, controls = test(plan, measured)  # 4. the target's test and its controls
        with clock("write"):
            weighing = weigh(plan, prompts, measured, target)
        result = assemble(plan, measured, target, controls, weighing, clock)
        save_provenance(run, result)
        render_provenance(run)
        return result


def _prompts(plan: ProvenancePlan) -> Prompts:
    """The prompts of every image: its given caption, or the captioner's (used as it is)."""
    if PromptSource.CAPTIONER not in plan.sources:
        return Prompts(plan.run)
    captioner = BlipCaptioner(resolve_captioner(plan.settings.captioner))
    card = {"captioner": plan.settings.captioner, "fine-tuned": False}
    return Prompts(plan.run, {PromptSource.CAPTIONER: captioner}, {PromptSource.CAPTIONER: card})


def measure(plan: ProvenancePlan, prompts: Prompts, show_progress: bool = True) -> Measured:
    """The target's and the base model's features of every image (per prompt source, side by side), and the
    images' own: each generation through the cache, each embedding once."""
    samples = plan.samples
    queries = Queries(plan.config, plan.run, prompts, plan.encoders, show_progress, reference=plan.base)
    target = _side_by_side([queries.features(plan.target, samples, s) for s in plan.sources], plan.sources)
    base = _side_by_side([queries.features(plan.base, samples, s) for s in plan.sources], plan.sources)
    channels = ", ".join(plan.config.generation.query_channels())
    evidence = [f"black-box: the {channels} answers against each image, and their difference from the base model's"]
    if plan.settings.graybox and plan.file.target.has_weights:
        target, base, said = _with_weights(plan, prompts, target, base)
        evidence.append(said)
    images = [load_rgb(s.image_path) for s in samples]
    blind = blind_features(target.sample_ids, images, plan.encoders, target.y)
    return Measured(target, base, blind, dict(queries.images_requested), tuple(evidence), queries)


def _side_by_side(tables: list[FeatureTable], sources: tuple[PromptSource, ...]) -> FeatureTable:
    """One table of the features of several prompt sources (each source's columns named after it), or the one."""
    if len(tables) == 1:
        return tables[0]
    names = tuple(f"{source}:{name}" for source, table in zip(sources, tables, strict=True) for name in table.names)
    return FeatureTable(tables[0].sample_ids, np.hstack([t.X for t in tables]), names, tables[0].y)


def _with_weights(
    plan: ProvenancePlan, prompts: Prompts, target: FeatureTable, base: FeatureTable
) -> tuple[FeatureTable, FeatureTable, str]:
    """The target's table with its gray-box scores and each minus the base model's (same images, prompts and
    noise), the base model's with its own; per prompt source (higher: more like a training image). The denoising
    loss always, PIA where the family allows it (not for models trained by flow matching); and those in words."""
    samples = plan.samples
    images = [load_rgb(s.image_path) for s in samples]
    pipes = {role: model.target.pipeline() for role, model in (("target", plan.target), ("base", plan.base))}  # type: ignore[attr-defined]
    attacks = ["loss"] if family_of(pipes["target"]).objective == "flow" else ["loss", "pia"]
    columns: dict[str, list[FloatArray]] = {"target": [], "base": []}
    names = []
    for source in plan.sources:
        texts = prompts.get(source, samples)
        for attack in attacks:
            for role, pipe in pipes.items():
                log.info(f"gray-box {attack} on the {role} model's weights ({source.words} prompts)")
                columns[role].append(graybox_scores(pipe, images, texts, attack, seed=plan.settings.seed))
            names.append(in_channel(WEIGHTS, f"{source}/{attack}"))
    on_target, on_base = np.column_stack(columns["target"]), np.column_stack(columns["base"])
    with_target = (*target.names, *names, *(against(n, Reference.BASE) for n in names))
    target = FeatureTable(
        target.sample_ids, np.hstack([target.X, on_target, on_target - on_base]), with_target, target.y
    )
    base = FeatureTable(base.sample_ids, np.hstack([base.X, on_base]), (*base.names, *names), base.y)
    said = " and ".join({"loss": "the denoising loss", "pia": "PIA's error"}[a] for a in attacks)
    return target, base, f"gray-box: {said} on the target's weights, and each minus the base model's"


@dataclass(frozen=True)
class Tested:
    """One test's record and each image's held-out score in it."""

    outcome: Finding
    scores: FloatArray


def test(plan: ProvenancePlan, measured: Measured) -> tuple[Tested, tuple[Tested, ...]]:
    """The cross-fitted permutation test on the target's features, then on the base model's and the images'."""
    target = _test(plan, "target", "the target's answers: " + "; ".join(measured.evidence), measured.target)
    base = _test(plan, "base model", "the base model's answers to the same queries (it saw neither set)", measured.base)
    blind = _test(plan, "blind", "the images alone (pixel statistics and embeddings), no model", measured.blind)
    return target, (base, blind)


def _test(plan: ProvenancePlan, name: str, evidence: str, table: FeatureTable) -> Tested:
    settings, labels = plan.settings, np.asarray(table.y, dtype=bool)
    found = crossfit_test(table.X, labels, folds=settings.folds, permutations=settings.permutations, seed=settings.seed)
    interval = plan.config.evaluation.evaluate(found.scores, labels).auc_interval
    log.info(f"{name}: held-out AUC {found.statistic:.3f}, p = {found.p_value:.3g}")
    outcome = Finding(
        name=name,
        evidence=evidence,
        features=len(table.names),
        auc=found.statistic,
        auc_low=interval.low,
        auc_high=interval.high,
        chance_low=float(np.quantile(found.null, 0.025)),
        chance_high=float(np.quantile(found.null, 0.975)),
        p_value=found.p_value,
        min_p_value=found.min_p_value,
        permutations=found.permutations,
        folds=found.folds,
    )
    return Tested(outcome, found.scores)


def verdict(plan: ProvenancePlan, target: Finding, controls: tuple[Finding, ...]) -> tuple[Verdict, str]:
    """The verdict and its reason in words, by the rules of the module docstring."""
    settings = plan.settings
    strays = [c for c in controls if c.p_value < settings.control_alpha]
    if strays:
        which = "; ".join(f"{c.name} p = {c.p_value:.3g}, held-out AUC {c.auc:.3f}" for c in strays)
        return INCONCLUSIVE, (
            f"inconclusive: references differ from suspects ({which}, below {settings.control_alpha:g}): the sets "
            "are told apart without the target, so what the target's test finds cannot be put down to training"
        )
    if target.p_value < settings.alpha:
        return USED, (
            f"used: the target's answers set the suspects apart from the references (p = {target.p_value:.3g} < "
            f"{settings.alpha:g}, held-out AUC {target.auc:.3f}), and neither control does"
        )
    return NO_EVIDENCE, (
        f"no evidence of use: the target's answers do not set the suspects apart from the references (p = "
        f"{target.p_value:.3g}, not below {settings.alpha:g}); this is not proof that they were not used"
    )


def weigh(plan: ProvenancePlan, prompts: Prompts, measured: Measured, target: Tested) -> tuple[ExposedImage, ...]:
    """The suspects the target's test scores highest, beside the target's generations for them."""
    samples, settings = plan.samples, plan.settings
    order = [i for i in np.argsort(-target.scores, kind="stable") if samples[i].member][: settings.exposed]
    fingerprint, cache = plan.target.target.fingerprint, measured.queries.cache
    return tuple(
        exposed_image(
            samples[i],
            float(target.scores[i]),
            prompts.get_all(plan.sources[0], [samples[i]])[0],
            plan.config,
            fingerprint,
            cache,
        )
        for i in order
    )


def assemble(
    plan: ProvenancePlan,
    measured: Measured,
    target: Tested,
    controls: tuple[Tested, ...],
    weighing: tuple[ExposedImage, ...],
    clock: StageClock,
) -> ProvenanceResult:
    """The answer, with the counts, the query budget and the seeds that produced it."""
    settings, generation = plan.settings, plan.config.generation
    said, reason = verdict(plan, target.outcome, tuple(c.outcome for c in controls))
    scores = tuple(ImageScore(s.id, bool(s.member), float(v)) for s, v in zip(plan.samples, target.scores, strict=True))
    return ProvenanceResult(
        name=settings.name,
        diffmia_version=__version__,
        verdict=said,
        reason=reason,
        alpha=settings.alpha,
        control_alpha=settings.control_alpha,
        test=target.outcome,
        controls=tuple(c.outcome for c in controls),
        suspects=len(plan.suspects),
        references=len(plan.references),
        prompts=tuple(map(str, plan.sources)),
        evidence=measured.evidence,
        channels=tuple(generation.query_channels()),
        queries_per_image=generation.queries_per_image,
        images_requested=measured.images_requested,
        seeds={"provenance": settings.seed, "generation": generation.seed, "evaluation": plan.config.evaluation.seed},
        models={
            "target": str(plan.target.spec.get("model", plan.target.spec.get("url"))),
            "base": plan.base.spec["model"],
        },
        weighing=weighing,
        scores=scores,
        passes=(clock.finish(),),
        run_dir=plan.run,
    )
