"""Stages 5 and 6 of an audit, run before any attack is fitted: every query through the generation cache, and the
features of every model's answers, in the order the scenarios are reported. Per scenario: its shadows' feature
tables and the target's and base model's (with their base-calibrated columns when ``features.calibrate`` is on, and
their distances from outsider shadows when ``features.outsiders`` is on), the shadow-free baselines' scores, and the
blind control's image features. What one scenario measured, a later one that needs it reuses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image

from diffmia.attacks.baselines import BASELINES, Candidates
from diffmia.audit.models import AuditModels, Model
from diffmia.audit.prompts import Prompts
from diffmia.cache import GenerationCache
from diffmia.config import Config
from diffmia.data import MembershipSplit
from diffmia.encoders import Encoder
from diffmia.errors import ConfigError
from diffmia.features import blind_features, build_features, outsider_spread, versus_outsiders
from diffmia.images import load_rgb
from diffmia.names import PromptSource, Reference, Role, against, in_channel, reference_of
from diffmia.queries import build_queries, reference_seed
from diffmia.records import FeatureTable, FloatArray, Query, Sample
from diffmia.scenarios import Scenario

if TYPE_CHECKING:
    from diffmia.audit.plan import AuditPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScenarioMeasures:
    """What one scenario's attacks are fitted on and scored on: its shadows' tables (one per shadow model, labelled),
    the target's and the base model's tables of the target's candidates (by role), the baselines' scores of those
    candidates (by baseline and role), and the blind control's tables (pooled shadow images, target images)."""

    scenario: Scenario
    shadows: tuple[FeatureTable, ...]
    tables: dict[Role, FeatureTable]
    baselines: dict[tuple[str, Role], FloatArray]
    blind: tuple[FeatureTable, FeatureTable] | None

    @property
    def groups(self) -> npt.NDArray[np.int_]:
        """The shadow model of each pooled shadow row (a fold per shadow model)."""
        return np.repeat(np.arange(len(self.shadows)), [len(t) for t in self.shadows])


@dataclass(frozen=True)
class Measurements:
    """Everything the audit measured: per scenario, in order; every saved feature table by (model, prompt source),
    as ``features.parquet`` holds them; the images asked of each model; the generation cache."""

    scenarios: tuple[ScenarioMeasures, ...]
    tables: dict[tuple[str, str], FeatureTable]
    images_requested: dict[str, int]
    cache: GenerationCache


def measure(plan: AuditPlan, models: AuditModels, prompts: Prompts, show_progress: bool = True) -> Measurements:
    """Generate and compare everything the scenarios need (each (model, prompt source) once)."""
    queries = Queries(plan.config, plan.run, prompts, plan.encoders, show_progress, reference=models.base)
    baselines: dict[tuple[str, str, str], FloatArray] = {}  # shared across scenarios: by baseline, model, prompts
    blind: dict[tuple[str, ...], tuple[FeatureTable, FeatureTable]] = {}  # by the shadows it was fitted on
    measured = []
    for scenario in plan.scenarios:
        used = models.for_scenario(scenario)
        candidates = plan.data.split.samples
        source = scenario.prompt_source
        shadows = [queries.features(m, split.samples, source) for m, split in used]
        tables = {Role.TARGET: queries.features(models.target, candidates, source)}
        if plan.config.audit.base_control:
            tables[Role.BASE] = queries.features(models.base, candidates, source)
        if plan.config.features.outsiders:
            shadows, tables = with_outsiders(queries, used, source, shadows, tables, candidates)
        scores = {}
        for name in plan.config.audit.baselines:
            for role in tables:
                model = models.target if role == Role.TARGET else models.base
                scores[(name, role)] = _baseline(queries, name, model, candidates, source, baselines)
        seen = _blind(used, plan.data.split, plan.encoders, blind) if plan.config.audit.blind_control else None
        measured.append(ScenarioMeasures(scenario, tuple(shadows), tables, scores, seen))
    return Measurements(tuple(measured), dict(queries.tables), dict(queries.images_requested), queries.cache)


@dataclass
class Queries:
    """Generation (through the cache) and features of (model, samples, prompt source), each computed once, with the
    images requested per model. ``tables`` holds the tables an audit saves; outsider references are not saved."""

    config: Config
    run: Path
    prompts: Prompts
    encoders: dict[str, Encoder]
    show_progress: bool = True
    reference: Model | None = None  # the base model, queried with independent seeds when features.calibrate is on
    tables: dict[tuple[str, str], FeatureTable] = field(default_factory=dict)
    images_requested: dict[str, int] = field(default_factory=dict)
    _references: dict[tuple[str, tuple[str, ...]], FeatureTable] = field(default_factory=dict)
    _outside: dict[tuple[str, str, tuple[str, ...]], FeatureTable] = field(default_factory=dict)
    cache: GenerationCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = GenerationCache(self.config.generation.cache or self.run / "cache")

    def features(self, model: Model, samples: Sequence[Sample], source: PromptSource) -> FeatureTable:
        """``model``'s features of ``samples`` (with their base-calibrated columns when features.calibrate is on)."""
        key = (model.name, str(source))
        if key not in self.tables:
            log.info(f"querying {model.name} with {len(samples)} images ({PromptSource(source).words} prompts)")
            table = self.compare(model, samples, self.prompts.get_all(source, samples))
            if self.config.features.calibrate:
                table = self._calibrated(table, samples, source)
            self.tables[key] = table
        return self.tables[key]

    def _calibrated(self, table: FeatureTable, samples: Sequence[Sample], source: PromptSource) -> FeatureTable:
        """``table`` and, beside each column, that column minus the base model's for the same candidates and
        prompts, generated with the reference seeds (so that the base model's own control is not zero by design)."""
        if self.reference is None:
            raise ConfigError("features.calibrate needs the base model to query (audit.base_model)")
        key = (str(source), tuple(s.id for s in samples))  # not saved: raw minus calibrated columns give it back
        if key not in self._references:
            log.info(f"querying {self.reference.name} with {len(samples)} images, reference seeds")
            seed = reference_seed(self.config.generation.seed)
            prompts = self.prompts.get_all(source, samples)
            self._references[key] = self.compare(self.reference, samples, prompts, seed)
        reference = self._references[key]
        names = (*table.names, *(against(n, Reference.BASE) for n in table.names))
        return FeatureTable(table.sample_ids, np.hstack([table.X, table.X - reference.X]), names, table.y)

    def outside(self, model: Model, samples: Sequence[Sample], source: PromptSource) -> FeatureTable:
        """``model``'s features (uncalibrated) of ``samples`` it was not fine-tuned on, as an outsider reference
        (features.outsiders; not saved: the target's and controls' distances from them are scored)."""
        key = (model.name, str(source), tuple(s.id for s in samples))
        if key not in self._outside:
            log.info(
                f"querying {model.name} with {len(samples)} of the target's candidates (outsider reference, "
                f"{PromptSource(source).words} prompts)"
            )
            self._outside[key] = self.compare(model, samples, self.prompts.get_all(source, samples))
        return self._outside[key]

    def compare(
        self, model: Model, samples: Sequence[Sample], prompts: Sequence[Sequence[str]], seed: int | None = None
    ) -> FeatureTable:
        """Generate (through the cache) and compare: one row per sample, columns ``channel/encoder/...``; the
        queries' seeds derive from ``seed`` (default: generation.seed)."""
        settings, features = self.config.generation, self.config.features
        if seed is not None:
            settings = settings.model_copy(update={"seed": seed})
        m = settings.queries_per_image
        originals = [load_rgb(s.image_path) for s in samples]
        ids = tuple(s.id for s in samples)
        labels = np.array([bool(s.member) for s in samples]) if all(s.member is not None for s in samples) else None
        parts = []
        for channel in settings.query_channels():
            # one channel at a time: every chunk holds queries of one kind, which the target runs as one batch
            images = self.generate(model, build_queries(samples, prompts, settings.for_channel(channel)))
            generations = [images[i * m : (i + 1) * m] for i in range(len(samples))]  # by sample, then index
            table = build_features(
                ids,
                originals,
                generations,
                self.encoders,
                distances=features.distances,
                granularities=features.granularities,
                aggregations=features.aggregations,
                labels=labels,
            )
            parts.append(FeatureTable(ids, table.X, tuple(in_channel(channel, n) for n in table.names), labels))
        return FeatureTable(ids, np.hstack([p.X for p in parts]), tuple(n for p in parts for n in p.names), labels)

    def generate(self, model: Model, queries: Sequence[Query]) -> list[Image.Image]:
        images = model.generate(queries, self.cache, self.config.generation, self.show_progress)
        self.images_requested[model.name] = self.images_requested.get(model.name, 0) + len(images)
        return images


def _baseline(
    queries: Queries,
    name: str,
    model: Model,
    samples: Sequence[Sample],
    source: PromptSource,
    memo: dict[tuple[str, str, str], FloatArray],
) -> FloatArray:
    """A shadow-free baseline's scores of ``samples`` on ``model`` (caption-free ones once per model)."""
    baseline = BASELINES.lookup(name)
    key = (name, model.name, "" if baseline.caption_free else str(source))
    if key not in memo:
        config = queries.config
        candidates = Candidates(
            model=model.name,
            images=[load_rgb(s.image_path) for s in samples],
            prompts=[] if baseline.caption_free else queries.prompts.get(source, samples),
            prompts_from=PromptSource(source).words,
            target=model.target,
            generate=lambda asked: queries.generate(model, asked),
            encoder=next(iter(queries.encoders.values())),
            generation=config.generation,
            samples=config.audit.gan_leaks_samples,
            seed=config.audit.seed,
        )
        memo[key] = baseline.score(candidates)
    return memo[key]


def _blind(
    shadows: Sequence[tuple[Model, MembershipSplit]],
    target: MembershipSplit,
    encoders: dict[str, Encoder],
    memo: dict[tuple[str, ...], tuple[FeatureTable, FeatureTable]],
) -> tuple[FeatureTable, FeatureTable]:
    """Model-free features of the shadows' query images (pooled) and of the target's, with their labels."""
    key = tuple(m.name for m, _ in shadows)
    if key not in memo:

        def table(split: MembershipSplit) -> FeatureTable:
            samples = split.samples
            images = [load_rgb(s.image_path) for s in samples]
            labels = np.array([bool(s.member) for s in samples])
            return blind_features(tuple(s.id for s in samples), images, encoders, labels)

        memo[key] = (pool_tables([table(split) for _, split in shadows]), table(target))
    return memo[key]


def pool_tables(tables: Sequence[FeatureTable]) -> FeatureTable:
    """Several shadows' tables as one (rows stacked; ids made unique by the shadow's position)."""
    if len(tables) == 1:
        return tables[0]
    ids = tuple(f"{k}:{i}" for k, t in enumerate(tables) for i in t.sample_ids)
    labels = np.concatenate([t.y for t in tables if t.y is not None])
    return FeatureTable(ids, np.vstack([t.X for t in tables]), tables[0].names, labels)


def with_outsiders(
    queries: Queries,
    used: Sequence[tuple[Model, MembershipSplit]],
    source: PromptSource,
    shadows: Sequence[FeatureTable],
    tables: dict[Role, FeatureTable],
    candidates: Sequence[Sample],
) -> tuple[list[FeatureTable], dict[Role, FeatureTable]]:
    """The shadows' tables and the target's (and controls') with, beside each uncalibrated feature, its
    standardised distance from the same feature under shadows the row's candidate was an outsider of
    (features.outsiders, LiRA offline): the first len(used) / 2 - 1 such shadows, a shadow's own rows excluding
    that shadow, so that every row has as many references; the spread is the outsiders' over D' (shadow data)."""
    raw = tuple(n for n in shadows[0].names if reference_of(n) is not Reference.BASE)
    insiders = [{s.id for s in split.members} for _, split in used]
    n_references = len(used) // 2 - 1  # complementary pairs: every image of D' is an outsider of half the shadows

    def references(sample_id: str, own: int | None = None) -> list[int]:
        outsider_of = [j for j in range(len(used)) if j != own and sample_id not in insiders[j]]
        return outsider_of[:n_references]

    # every shadow queried all of D'; the target's candidates outside D' are queried under the shadows they need
    under = [dict(zip(t.sample_ids, t.select(raw).X, strict=True)) for t in shadows]
    for j, (model, _) in enumerate(used):
        needed = [s for s in candidates if s.id not in under[j] and j in references(s.id)]
        if needed:
            extra = queries.outside(model, needed, source).select(raw)
            under[j].update(zip(extra.sample_ids, extra.X, strict=True))
    outsiders = [
        np.array([under[j][x] for j in range(len(used)) if x not in insiders[j]]) for x in shadows[0].sample_ids
    ]
    spread = outsider_spread(outsiders)

    def add(table: FeatureTable, own: int | None = None) -> FeatureTable:
        reference = np.array([[under[j][x] for j in references(x, own)] for x in table.sample_ids])
        distance = versus_outsiders(table.select(raw).X, reference, spread)
        names = (*table.names, *(against(n, Reference.OUTSIDERS) for n in raw))
        return FeatureTable(table.sample_ids, np.hstack([table.X, distance]), names, table.y)

    return [add(t, k) for k, t in enumerate(shadows)], {role: add(t) for role, t in tables.items()}
