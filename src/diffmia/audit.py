"""The audit: one numbered recipe from a configuration to a run directory (:func:`run_audit`).

1. validate the configuration and the data (every problem at once, before any model is touched)
2. split: the target's members / non-members, the auxiliary sets D' and every shadow's members / non-members
3. models: the target (given, or fine-tuned here), the shadows (fine-tuned here, or given), the base (control)
4. prompts: the given captions, or captions from a captioner fine-tuned on D'
5. generate: every query through the cache (resumable; nothing is generated twice)
6. features: query image vs its generations, per channel (embeddings cached)
7. attacks: fitted on the pooled shadow features only, frozen, applied once to the target and the controls; each
   scenario's headline chosen by cross-validation on the shadows before that
8. evaluate, and write the run directory: splits, features, scores, result.json, report.html

Each step is a function of the configuration sections it needs. A run killed at any point restarts where it
stopped (finished fine-tunes and captioners, cached generations and embeddings are reused); rerunning a finished
run gives identical numbers and adds its timings to the run's record of passes.
"""

from __future__ import annotations

import contextlib
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np

from diffmia.attacks import MembershipAttack, ShadowValidation, cross_validate, fit_attacks, score_with
from diffmia.attacks.baselines import gan_leaks_queries, graybox_scores, nearest_generation_scores
from diffmia.attacks.threshold import REDUCTIONS
from diffmia.cache import GenerationCache
from diffmia.captioners import load_captioner
from diffmia.config import AuditConfig, Channel, Config, DataConfig, FeaturesConfig, dump_config, load_config
from diffmia.data import (
    AuxiliarySet,
    MembershipSplit,
    check_audit_data,
    load_image_folder,
    plan_auxiliary,
)
from diffmia.encoders import HFVisionEncoder, PixelEncoder
from diffmia.errors import ConfigError, DataError
from diffmia.features import (
    NUMBERED,
    CachedEncoder,
    Encoder,
    blind_features,
    build_features,
    column_name,
    column_pattern,
    outsider_spread,
    versus_outsiders,
)
from diffmia.files import atomic_path, exclusive_lock, write_json
from diffmia.images import load_rgb
from diffmia.lab.data import write_digits
from diffmia.models import (
    GivenShadow,
    Model,
    ModelStore,
    base_model,
    check_model_sources,
    finetuned,
    given_shadows,
    store_of,
    target_model,
)
from diffmia.progress import Feedback
from diffmia.prompts import Prompts
from diffmia.quality import digit_quality
from diffmia.queries import build_queries, reference_seed
from diffmia.records import FeatureTable, Sample, ScoreSet
from diffmia.report import render_report
from diffmia.report.verdict import control_strays
from diffmia.results import (
    COMBINED,
    HEADLINE_RULE,
    DataSummary,
    ExposedImage,
    Exposure,
    Pass,
    Quality,
    RunResult,
    fixed_headline,
    previous_passes,
    save_features,
    save_run,
    shadow_headline_rule,
)
from diffmia.scenarios import KINDS, SCENARIOS, Scenario, source_name
from diffmia.targets import probe_target
from diffmia.versions import __version__, package_versions

MODELS = ("target", "base", "blind")
CALIBRATED = "-minus-base"  # ends a base-calibrated feature's name (features.calibrate)
OUTSIDERS = "-vs-outsiders"  # ends a feature's distance from its outsider shadows (features.outsiders)
# where a baseline's evidence comes from: caption-free generations ("none": no query channel), or the weights
BASELINE_CHANNELS = {"gan-leaks": "none", "loss": "weights", "secmi": "weights", "pia": "weights"}


def run_dir_of(config: Config) -> Path:
    return Path(config.audit.runs_dir) / config.audit.name


def run_audit(
    config: Config, run_dir: str | Path | None = None, *, show_progress: bool = True, log: Callable[[str], None] = print
) -> RunResult:
    """Run the audit of ``config`` into ``run_dir`` (default ``runs_dir/name``); see the module docstring."""
    run = Path(run_dir) if run_dir is not None else run_dir_of(config)
    feedback, clock = Feedback(log, show_progress), _Clock()
    scenarios = [SCENARIOS[s] for s in dict.fromkeys(config.audit.scenarios)]
    with clock("validate and split"):
        # 1. validate: configuration, data, model folders, encoders; nothing is trained before this passes
        data = validate(config, run, scenarios)
    with exclusive_lock(run, "run directory"):  # a second run of this directory stops here, saying who holds it
        with clock("validate and split"):
            # 2. split: D' of each kind the scenarios need, and every shadow's members / non-members
            auxiliary = split(config.audit, data, scenarios, run)
        log(data.describe(config.audit, scenarios))
        store = store_of(config.audit, run)
        with clock("fine-tune"):
            # 3. models: the target, the shadows, the un-fine-tuned base model (a control)
            models = build_models(config, store, data, auxiliary, feedback)
        with clock("captions"):
            # 4. prompts: the given captions, or those of a captioner fine-tuned on each D'
            prompts = Prompts(config.audit, config.captioner_training, store, scenarios, auxiliary, feedback)
        # 5-6. generation (through the cache) and features, each (model, samples, prompt source) once
        queries = Queries(config, run, prompts, data.encoders, feedback, models.base)
        with clock("attacks and evaluation"):
            # 7. attacks: fitted on the shadows only, frozen, applied once to the target and the controls
            attacked = {s.name: attack(config, s, models, data.split, queries) for s in scenarios}
            score_sets = [s for sets, _ in attacked.values() for s in sets]
            chosen = {name: choose_headline(config, validation) for name, (_, validation) in attacked.items()}
        clock.carve("attacks and evaluation", "generate and features", queries.seconds)
        with clock("generation quality"):
            quality = rate_generations(config, run, models, data.split, queries.cache, show_progress)
        with clock("write"):
            # 8. evaluate and write the run directory
            score_sets = sorted(score_sets, key=_order(config, scenarios))
            exposed = most_exposed(
                config,
                score_sets,
                models.target,
                data.split,
                prompts,
                queries.cache,
                (scenarios[0].name, *chosen[scenarios[0].name]),
            )
            save_features(run, queries.tables)
        passes = (*previous_passes(run), clock.finish())
        validation = {name: v for name, (_, v) in attacked.items()}
        result = assemble(
            config,
            data,
            scenarios,
            models,
            prompts,
            queries,
            quality,
            exposed,
            passes,
            score_sets,
            run,
            chosen,
            validation,
        )
        save_run(run, result)
        render_report(run)
        return result


# --- 1-2. validation, data and splits -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditData:
    """The audit's images, the shadows given with theirs, and the encoders (all checked)."""

    members: tuple[Sample, ...]
    nonmembers: tuple[Sample, ...]
    pool: tuple[Sample, ...]
    source: str
    given_shadows: tuple[GivenShadow, ...]
    encoders: dict[str, Encoder]

    @property
    def split(self) -> MembershipSplit:
        return MembershipSplit(self.members, self.nonmembers)

    def shadow_members(self, audit: AuditConfig) -> int:
        return audit.shadow_members or len(self.members)

    def describe(self, audit: AuditConfig, scenarios: Sequence[Scenario]) -> str:
        return (
            f"data: {len(self.members)} members, {len(self.nonmembers)} non-members, {len(self.pool)} auxiliary "
            f"({self.source}); scenarios {', '.join(s.name for s in scenarios)}; D' of "
            f"{2 * self.shadow_members(audit)} images, {audit.shadows} shadow(s) each"
        )


def validate(config: Config, run: Path, scenarios: Sequence[Scenario]) -> AuditData:
    """Every check that can fail before a model is trained; then the resolved configuration is written."""
    audit = config.audit
    check_threshold_feature(config)
    check_run_dir(run, config)
    members, nonmembers, pool, source = load_data(config.data, run)
    check_audit_data(
        members, nonmembers, pool, [s.name for s in scenarios], members_need_captions=audit.finetune_target
    )
    shadows = given_shadows(config)
    check_model_sources(config)
    if not audit.finetune_target:
        probe_target(config.target.spec())  # an HTTP endpoint answers now, not after hours of training
    if any(not s.given_caption for s in scenarios) and audit.captioner not in ("builtin", "tiny"):
        load_captioner(audit.captioner)  # missing weights are reported now, not after the shadows are trained
    encoders = make_encoders(config.features, run)
    with atomic_path(run / "config.toml") as tmp:
        tmp.write_text(dump_config(config), encoding="utf-8")
    return AuditData(tuple(members), tuple(nonmembers), tuple(pool), source, tuple(shadows), encoders)


def check_threshold_feature(config: Config) -> None:
    """``[attacks.threshold] reduce``, when it names a feature, names one this audit computes, without its channel:
    the attack runs on each channel's table and on all channels together (there on the mean of the feature's
    columns), so a channel's name or a column index would mean a different feature in each."""
    reduce = config.attacks.threshold.reduce
    if "threshold" not in config.attacks.use or reduce in REDUCTIONS:
        return
    features = config.features
    embedding = [d for d in features.distances if d != "ssim"]
    calibrated = [a + CALIBRATED for a in features.aggregations if features.calibrate]
    outsiders = [a + OUTSIDERS for a in features.aggregations if features.outsiders]
    aggregations = [*features.aggregations, *calibrated, *outsiders]
    encoders = [encoder_name(name) for name in dict.fromkeys(features.encoders)]
    planned: list[tuple[str, str, str, str]] = [
        (e, d, g, a)
        for e in encoders
        for d in embedding
        for g in features.granularities
        if g == "pooled" or e != "pixels"
        for a in aggregations
    ]
    planned += [("pixels", "ssim", "pooled", a) for a in aggregations if "ssim" in features.distances]
    shown = [column_name(e, d, g + "#" * NUMBERED.get(g, 0), a) for e, d, g, a in planned]
    where = "attacks.threshold.reduce"
    if isinstance(reduce, int):
        raise ConfigError(
            f"{where} = {reduce} would be column {reduce} of each table, a different feature in each "
            f"channel's table and in the combined one: name the feature instead (e.g. {shown[0]!r})"
        )
    channel, _, rest = reduce.partition("/")
    if channel in get_args(Channel):
        raise ConfigError(
            f"{where} {reduce!r}: name the feature without its channel ({rest!r}); the attack runs on "
            "each channel's table and on all channels together"
        )
    if not any(re.fullmatch(column_pattern(*column), reduce) for column in planned):
        raise ConfigError(
            f"{where} {reduce!r} is none of the features this audit computes: {', '.join(shown)} "
            "(# numbers the encoder's tokens or hidden units)"
        )


def check_run_dir(run: Path, config: Config) -> None:
    """A run directory of another configuration is never reused (its models and splits belong to that one).
    Where the folder lives (``audit.runs_dir`` and ``audit.name``) is not part of what it holds: a moved run
    resumes."""
    saved = run / "config.toml"
    if not saved.exists():
        return
    previous = load_config(saved)
    where = {"runs_dir": config.audit.runs_dir, "name": config.audit.name}
    previous = previous.model_copy(update={"audit": previous.audit.model_copy(update=where)})
    if dump_config(previous) != dump_config(config):
        raise ConfigError(
            f"{run} holds a run of a different configuration ({saved}); choose another audit.name or runs_dir, "
            "or delete that folder"
        )


def load_data(data: DataConfig, run: Path) -> tuple[list[Sample], list[Sample], list[Sample], str]:
    """Members, non-members and the auxiliary pool: three image folders, or draws from the bundled digits."""
    if not data.builtin:
        # DataConfig requires all three folders together
        folders = [load_image_folder(p) for p in (data.members, data.nonmembers, data.auxiliary) if p is not None]
        ids = [s.id for f in folders for s in f.samples]
        if len(set(ids)) != len(ids):
            raise DataError(
                "sample ids repeat across the members, non-members and auxiliary folders; "
                "give every image a unique id in its metadata"
            )
        members, nonmembers, pool = (list(f.samples) for f in folders)
        return members, nonmembers, pool, "folders"
    root = run / "data" / "digits"
    if not (root / "metadata.jsonl").exists():
        write_digits(root)
    folder = load_image_folder(root)
    private = [s for s in folder.samples if folder.extra[s.id].get("split") == "private"]
    order = np.random.default_rng(data.seed).permutation(len(private))
    n_m, n_n = data.builtin_members, data.builtin_nonmembers
    if n_m + n_n >= len(private):
        raise ConfigError(
            f"data.builtin_members + builtin_nonmembers must leave auxiliary images of the "
            f"{len(private)} private digits, got {n_m} + {n_n}"
        )
    chosen = [private[i] for i in order]
    return chosen[:n_m], chosen[n_m : n_m + n_n], chosen[n_m + n_n :], "bundled digits (private split)"


def make_encoders(features: FeaturesConfig, run: Path) -> dict[str, Encoder]:
    """The configured encoders by short name, each behind the run's embedding cache; hub weights load now."""
    encoders: dict[str, Encoder] = {}
    for name in dict.fromkeys(features.encoders):
        encoder: Encoder
        if name == "pixels":
            encoder = PixelEncoder(features.pixel_size)
        else:
            encoder = HFVisionEncoder(name)
            encoder.load()  # missing weights are reported before any model is trained or queried
        encoders[encoder_name(name)] = CachedEncoder(encoder, run / "embeddings")
    return encoders


def encoder_name(name: str) -> str:
    """The short name an encoder's feature columns carry: ``pixels``, or a hub id's or folder's last part."""
    return name if name == "pixels" else Path(name.rstrip("/")).name


def split(audit: AuditConfig, data: AuditData, scenarios: Sequence[Scenario], run: Path) -> dict[str, AuxiliarySet]:
    """D' of each kind the scenarios need, drawn with the audit's seed; all splits saved in ``splits.json``."""
    auxiliary = {
        kind: plan_auxiliary(
            kind,
            data.split,
            data.pool,
            shadow_members=data.shadow_members(audit),
            overlap=audit.overlap,
            n_shadows=audit.shadows,
            rng=np.random.default_rng([audit.seed, KINDS.index(kind)]),
        )
        for kind in KINDS
        if any(s.kind == kind for s in scenarios)
    }
    splits = {"target": data.split.to_dict(), "auxiliary": {k: a.to_dict() for k, a in auxiliary.items()}}
    write_json(run / "splits.json", splits)
    return auxiliary


# --- 3. models ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditModels:
    """The target, the base model (a control), and the shadows with their splits: fine-tuned per D' kind, or
    given for a set of scenarios."""

    target: Model
    base: Model
    shadows: dict[str, list[tuple[Model, MembershipSplit]]]
    given: tuple[GivenShadow, ...]

    def for_scenario(self, scenario: Scenario) -> list[tuple[Model, MembershipSplit]]:
        given = [(g.model, g.split) for g in self.given if scenario.name in g.scenarios]
        return self.shadows.get(scenario.kind, []) + given

    def regimes(self) -> dict[str, dict[str, Any]]:
        regimes = {"target": self.target.regime, "base": self.base.regime}
        regimes.update({m.name: m.regime for shadows in self.shadows.values() for m, _ in shadows})
        regimes.update({g.model.name: g.model.regime for g in self.given})
        return regimes


def build_models(
    config: Config, store: ModelStore, data: AuditData, auxiliary: dict[str, AuxiliarySet], feedback: Feedback
) -> AuditModels:
    """Fine-tune (or reuse) the target and every shadow; the shadows on ``shadow_base_model`` when it is set."""
    target = target_model(config, store, data.members, feedback)
    shadow_base = config.audit.shadow_base_model or config.audit.base_model
    shadows = {
        kind: [
            (
                finetuned(
                    store, config.target, config.finetune, f"shadow-{kind}-{j}", shadow_base, split.members, feedback
                ),
                split,
            )
            for j, split in enumerate(aux.shadow_splits)
        ]
        for kind, aux in auxiliary.items()
    }
    return AuditModels(target, base_model(config.audit, config.target), shadows, data.given_shadows)


# --- 5-6. generation and features -----------------------------------------------------------------------------


@dataclass
class Queries:
    """Features of (model, samples, prompt source) and shadow-free baseline scores, each computed once, with the
    seconds spent and the images requested per model."""

    config: Config
    run: Path
    prompts: Prompts
    encoders: dict[str, Encoder]
    feedback: Feedback
    reference: Model | None = None  # the base model, queried with independent seeds when features.calibrate is on
    tables: dict[tuple[str, str], FeatureTable] = field(default_factory=dict)
    images_requested: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    _baselines: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    _blind: dict[str, tuple[FeatureTable, FeatureTable]] = field(default_factory=dict)
    _references: dict[tuple[str, tuple[str, ...]], FeatureTable] = field(default_factory=dict)
    _outside: dict[tuple[str, str, tuple[str, ...]], FeatureTable] = field(default_factory=dict)
    cache: GenerationCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = GenerationCache(self.config.generation.cache or self.run / "cache")

    def features(self, model: Model, samples: Sequence[Sample], source: str) -> FeatureTable:
        """``model``'s features of ``samples`` (with their base-calibrated columns when features.calibrate is on)."""
        key = (model.name, source)
        if key not in self.tables:
            started = time.perf_counter()
            self.feedback.log(f"querying {model.name} with {len(samples)} images ({source_name(source)} prompts)")
            table = self._compare(model, samples, self.prompts.get_all(source, samples))
            if self.config.features.calibrate:
                table = self._calibrated(table, samples, source)
            self.tables[key] = table
            self.seconds += time.perf_counter() - started
        return self.tables[key]

    def _calibrated(self, table: FeatureTable, samples: Sequence[Sample], source: str) -> FeatureTable:
        """``table`` and, beside each column, that column minus the base model's for the same candidates and
        prompts, generated with the reference seeds (so that the base model's own control is not zero by design)."""
        if self.reference is None:
            raise ConfigError("features.calibrate needs the base model to query (audit.base_model)")
        key = (source, tuple(s.id for s in samples))  # not saved: raw minus calibrated columns give it back
        if key not in self._references:
            self.feedback.log(f"querying {self.reference.name} with {len(samples)} images, reference seeds")
            seed = reference_seed(self.config.generation.seed)
            prompts = self.prompts.get_all(source, samples)
            self._references[key] = self._compare(self.reference, samples, prompts, seed)
        reference = self._references[key]
        names = (*table.names, *(n + CALIBRATED for n in table.names))
        return FeatureTable(table.sample_ids, np.hstack([table.X, table.X - reference.X]), names, table.y)

    def outside(self, model: Model, samples: Sequence[Sample], source: str) -> FeatureTable:
        """``model``'s features (uncalibrated) of ``samples`` it was not fine-tuned on, as an outsider reference
        (features.outsiders; not saved: the target's and controls' distances from them are scored)."""
        key = (model.name, source, tuple(s.id for s in samples))
        if key not in self._outside:
            started = time.perf_counter()
            self.feedback.log(
                f"querying {model.name} with {len(samples)} of the target's candidates (outsider "
                f"reference, {source_name(source)} prompts)"
            )
            self._outside[key] = self._compare(model, samples, self.prompts.get_all(source, samples))
            self.seconds += time.perf_counter() - started
        return self._outside[key]

    def _compare(
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
            queries = build_queries(samples, prompts, settings.for_channel(channel))
            images = self._generate(model, queries)
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
            parts.append(FeatureTable(ids, table.X, tuple(f"{channel}/{n}" for n in table.names), labels))
        return FeatureTable(ids, np.hstack([p.X for p in parts]), tuple(n for p in parts for n in p.names), labels)

    def _generate(self, model: Model, queries: Sequence[Any]) -> list[Any]:
        images = model.generate(queries, self.cache, self.config.generation, self.feedback.show_progress)
        self.images_requested[model.name] = self.images_requested.get(model.name, 0) + len(images)
        return images

    def baseline(self, name: str, model: Model, samples: Sequence[Sample], source: str) -> np.ndarray:
        """A shadow-free baseline's scores of ``samples`` (caption-free ones once per model)."""
        key = (name, model.name, "" if name == "gan-leaks" else source)
        if key not in self._baselines:
            started = time.perf_counter()
            originals = [load_rgb(s.image_path) for s in samples]
            if name == "gan-leaks":
                n = self.config.audit.gan_leaks_samples
                self.feedback.log(f"GAN-Leaks baseline: {n} caption-free generations of {model.name}")
                generated = self._generate(model, gan_leaks_queries(n, self.config.generation))
                scores = nearest_generation_scores(originals, generated, next(iter(self.encoders.values())))
            else:
                self.feedback.log(f"gray-box baseline {name} on {model.name}'s weights ({source_name(source)} prompts)")
                pipe = model.target.pipeline()  # type: ignore[attr-defined]  # a local DiffusersTarget (config check)
                scores = graybox_scores(
                    pipe, originals, self.prompts.get(source, samples), name, seed=self.config.audit.seed
                )
            self._baselines[key] = scores
            self.seconds += time.perf_counter() - started
        return self._baselines[key]

    def blind(
        self, shadows: Sequence[tuple[Model, MembershipSplit]], target: MembershipSplit
    ) -> tuple[FeatureTable, FeatureTable]:
        """Model-free features of the shadows' query images (pooled) and of the target's, with their labels."""
        key = ",".join(m.name for m, _ in shadows)
        if key not in self._blind:

            def table(split: MembershipSplit) -> FeatureTable:
                samples = split.samples
                images = [load_rgb(s.image_path) for s in samples]
                labels = np.array([bool(s.member) for s in samples])
                return blind_features(tuple(s.id for s in samples), images, self.encoders, labels)

            self._blind[key] = (pool_tables([table(split) for _, split in shadows]), table(target))
        return self._blind[key]


# --- 7. attacks -----------------------------------------------------------------------------------------------


Validation = dict[tuple[str, str], ShadowValidation]  # (channel, attack) -> its out-of-fold shadow performance


def attack(
    config: Config, scenario: Scenario, models: AuditModels, target: MembershipSplit, queries: Queries
) -> tuple[list[ScoreSet], Validation]:
    """One scenario: attacks fitted on its shadows' pooled features, per channel and on all channels together,
    scored on the target and the base model; the shadow-free baselines; the blind control. With the headline rule
    "shadow", each attack is first cross-validated on the shadow data (what the headline is chosen by)."""
    audit, source, sets = config.audit, scenario.prompt_source, []
    validation: Validation = {}
    used = models.for_scenario(scenario)
    shadows = [queries.features(m, split.samples, source) for m, split in used]
    groups = np.repeat(np.arange(len(used)), [len(split.samples) for _, split in used])  # a fold per shadow model
    tables = {"target": queries.features(models.target, target.samples, source)}
    if audit.base_control:
        tables["base"] = queries.features(models.base, target.samples, source)
    if config.features.outsiders:
        shadows, tables = with_outsiders(queries, used, source, shadows, tables, target.samples)
    shadow = pool_tables(shadows)
    for channel, names in channel_sets(shadow.names, config.generation.query_channels()).items():
        attacks, table = channel_attacks(config, names), columns(shadow, names)
        if config.attacks.headline == "shadow":
            checked = cross_validate(
                attacks,
                table,
                groups=groups,
                folds=config.attacks.headline_folds,
                seed=audit.seed,
                fpr=config.attacks.headline_fpr,
            )
            validation |= {(channel, name): v for name, v in checked.items()}
        fitted = fit_attacks(attacks, table)
        for model_name, table in tables.items():
            for name, scores in score_with(fitted, names, columns(table, names)).items():
                sets.append(_score_set(config, scenario, model_name, channel, name, table, scores))
    for name in audit.baselines:
        for model_name in tables:
            model = models.target if model_name == "target" else models.base
            scores = queries.baseline(name, model, target.samples, source)
            sets.append(
                _score_set(config, scenario, model_name, BASELINE_CHANNELS[name], name, tables["target"], scores)
            )
    if audit.blind_control:
        blind_shadow, blind_target = queries.blind(used, target)
        fitted = fit_attacks({"classifier": config.attacks.classifier.build()}, blind_shadow)
        for name, scores in score_with(fitted, blind_shadow.names, blind_target).items():
            sets.append(_score_set(config, scenario, "blind", "none", name, blind_target, scores))
    return sets, validation


def with_outsiders(
    queries: Queries,
    used: Sequence[tuple[Model, MembershipSplit]],
    source: str,
    shadows: Sequence[FeatureTable],
    tables: dict[str, FeatureTable],
    candidates: Sequence[Sample],
) -> tuple[list[FeatureTable], dict[str, FeatureTable]]:
    """The shadows' tables and the target's (and controls') with, beside each uncalibrated feature, its
    standardised distance from the same feature under shadows the row's candidate was an outsider of
    (features.outsiders, LiRA offline): the first len(used) / 2 - 1 such shadows, a shadow's own rows excluding
    that shadow, so that every row has as many references; the spread is the outsiders' over D' (shadow data)."""
    raw = tuple(n for n in shadows[0].names if not n.endswith(CALIBRATED))
    insiders = [{s.id for s in split.members} for _, split in used]
    n_references = len(used) // 2 - 1  # complementary pairs: every image of D' is an outsider of half the shadows

    def references(sample_id: str, own: int | None = None) -> list[int]:
        outsider_of = [j for j in range(len(used)) if j != own and sample_id not in insiders[j]]
        return outsider_of[:n_references]

    # every shadow queried all of D'; the target's candidates outside D' are queried under the shadows they need
    under = [dict(zip(t.sample_ids, columns(t, raw).X, strict=True)) for t in shadows]
    for j, (model, _) in enumerate(used):
        needed = [s for s in candidates if s.id not in under[j] and j in references(s.id)]
        if needed:
            extra = columns(queries.outside(model, needed, source), raw)
            under[j].update(zip(extra.sample_ids, extra.X, strict=True))
    dprime = shadows[0].sample_ids
    spread = outsider_spread(
        [np.array([under[j][x] for j in range(len(used)) if x not in insiders[j]]) for x in dprime]
    )

    def add(table: FeatureTable, own: int | None = None) -> FeatureTable:
        reference = np.array([[under[j][x] for j in references(x, own)] for x in table.sample_ids])
        distance = versus_outsiders(columns(table, raw).X, reference, spread)
        names = (*table.names, *(n + OUTSIDERS for n in raw))
        return FeatureTable(table.sample_ids, np.hstack([table.X, distance]), names, table.y)

    return [add(t, k) for k, t in enumerate(shadows)], {name: add(t) for name, t in tables.items()}


def choose_headline(config: Config, validation: Validation) -> tuple[str, str]:
    """A scenario's headline (channel, attack) by the configured rule: the best out-of-fold shadow TPR at the
    headline FPR (AUC breaks ties, then the order the attacks were fitted in), or the fixed rule."""
    if config.attacks.headline == "fixed" or not validation:
        return fixed_headline(config.generation.query_channels(), _attacks(config))

    def merit(key: tuple[str, str]) -> tuple[float, float]:  # a TPR the shadows cannot resolve (NaN) ranks last
        v = validation[key]
        return (v.tpr if np.isfinite(v.tpr) else -1.0, v.auc)

    return max(validation, key=merit)  # the first of equals


def pool_tables(tables: Sequence[FeatureTable]) -> FeatureTable:
    """Several shadows' tables as one (rows stacked; ids made unique by the shadow's position)."""
    if len(tables) == 1:
        return tables[0]
    ids = tuple(f"{k}:{i}" for k, t in enumerate(tables) for i in t.sample_ids)
    labels = np.concatenate([t.y for t in tables if t.y is not None])
    return FeatureTable(ids, np.vstack([t.X for t in tables]), tables[0].names, labels)


def channel_sets(names: Sequence[str], channels: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The feature columns of each channel alone, and of all channels together when there are several."""
    sets = {c: tuple(n for n in names if n.startswith(f"{c}/")) for c in dict.fromkeys(channels)}
    if len(sets) > 1:
        sets[COMBINED] = tuple(names)
    return sets


def channel_attacks(config: Config, names: Sequence[str]) -> dict[str, MembershipAttack]:
    """The configured attacks for a table of the columns ``names``: a threshold attack on a named feature takes
    that feature's column in each channel of the table (their mean where there are several)."""
    attacks = config.attacks.build()
    reduce = config.attacks.threshold.reduce
    if "threshold" in attacks and isinstance(reduce, str) and reduce not in REDUCTIONS:
        attacks["threshold"].set_params(reduce=[n for n in names if n.partition("/")[2] == reduce])
    return attacks


def columns(table: FeatureTable, names: tuple[str, ...]) -> FeatureTable:
    index = [table.names.index(n) for n in names]
    return FeatureTable(table.sample_ids, table.X[:, index], names, table.y)


def _score_set(
    config: Config, scenario: Scenario, model: str, channel: str, attack: str, table: FeatureTable, scores: np.ndarray
) -> ScoreSet:
    if table.y is None:
        raise DataError(f"the {model} table of scenario {scenario.name} has no membership labels to evaluate")
    evaluation = config.evaluation.evaluate(scores, table.y, threshold=0.0)
    return ScoreSet(scenario.name, model, channel, attack, table.sample_ids, scores, table.y, evaluation)


def _order(config: Config, scenarios: Sequence[Scenario]) -> Callable[[ScoreSet], tuple[int, int, int, int]]:
    """Score sets by scenario, model (target, then the controls), channel, then attack, as configured."""
    names = [s.name for s in scenarios]
    channel_order = [*config.generation.query_channels(), COMBINED, "weights", "none"]
    attack_order = _attacks(config)
    return lambda s: (
        names.index(s.scenario),
        MODELS.index(s.model),
        channel_order.index(s.channel),
        attack_order.index(s.attack) if s.model != "blind" else 0,
    )


# --- 8. quality, exposure, the result -------------------------------------------------------------------------


def rate_generations(
    config: Config, run: Path, models: AuditModels, target: MembershipSplit, cache: GenerationCache, show_progress: bool
) -> dict[str, Quality]:
    """Generation quality where the data can tell (the bundled digits), of the target, the base model and the
    shadows' own base model when it is another."""
    if not config.data.builtin:
        return {}
    rated = [models.target, models.base] if config.audit.base_control else [models.target]
    other = config.audit.shadow_base_model
    if other is not None and other != config.audit.base_model:
        rated.append(base_model(config.audit, config.target, "shadow-base", other))
    return digit_quality(config.generation, run / "data" / "digits", rated, target.nonmembers, cache, show_progress)


def most_exposed(
    config: Config,
    score_sets: Sequence[ScoreSet],
    target: Model,
    split: MembershipSplit,
    prompts: Prompts,
    cache: GenerationCache,
    key: tuple[str, str, str],
) -> Exposure | None:
    """The members the target leaks most by the headline score set ``key`` (scenario, channel, attack), highest
    scores first."""
    if config.audit.exposed == 0:
        return None
    (chosen,) = [s for s in score_sets if (s.scenario, s.model, s.channel, s.attack) == (key[0], "target", *key[1:])]
    by_id = {s.id: s for s in split.members}
    source, fingerprint = SCENARIOS[chosen.scenario].prompt_source, target.target.fingerprint
    rows = []
    for index in np.argsort(-chosen.scores, kind="stable"):
        sample = by_id.get(chosen.sample_ids[index])
        if sample is None:
            continue
        (options,) = prompts.get_all(source, [sample])  # several captions (audit.captions_per_image) shown as one
        generations = tuple(
            (q.mode, str(cache.image_path(q.key(fingerprint)).resolve()))
            for q in build_queries([sample], [options], config.generation)
        )
        rows.append(
            ExposedImage(
                sample.id,
                str(Path(sample.image_path).resolve()),
                " | ".join(options),
                float(chosen.scores[index]),
                generations,
            )
        )
        if len(rows) == config.audit.exposed:
            break
    return Exposure(chosen.scenario, chosen.channel, chosen.attack, tuple(rows))


def _attacks(config: Config) -> list[str]:
    """Every attack the run scores, in the configured order: the shadow-fitted ones, then the baselines."""
    return [*config.attacks.use, *config.audit.baselines]


def control_warnings(score_sets: Sequence[ScoreSet]) -> list[str]:
    """Controls that should sit near AUC 0.5 but do not (:func:`diffmia.report.verdict.control_strays`): the
    member / non-member split itself may be separable."""
    warnings = []
    for model, what in (("base", "the un-fine-tuned base model"), ("blind", "the query images alone (blind)")):
        strays = [s for s in score_sets if s.model == model and control_strays(s.evaluation)]
        if not strays:
            continue
        flagged = [
            f"{s.scenario}/{s.channel}/{s.attack} {s.evaluation.auc:.3f} "
            f"[{s.evaluation.auc_interval.low:.3f}, {s.evaluation.auc_interval.high:.3f}]"
            for s in strays
        ]
        # a captioner fine-tuned on an overlapping D' has seen part of the target's members: their prompts may be
        # better, and a prompt carries membership into any model's generations (scenario II)
        seen = sorted(
            {
                s.scenario
                for s in strays
                if not SCENARIOS[s.scenario].given_caption and SCENARIOS[s.scenario].kind == "overlap"
            }
        )
        why = (
            "Members and non-members may differ in distribution, so the target's numbers overstate what "
            "membership alone explains"
        )
        captioner = (
            f"the captioner of scenario {', '.join(seen)} was fine-tuned on a D' that holds part of the "
            "target's members and may caption them better, so its prompts carry membership into any "
            f"model's generations: the target's {', '.join(seen)} numbers overstate what the target itself "
            "leaks (compare with the disjoint scenarios, whose captioner never saw them)"
        )
        if model == "base" and len(seen) == len({s.scenario for s in strays}):
            why = captioner[0].upper() + captioner[1:]
        elif model == "base" and seen:
            why += f"; and {captioner}"
        warnings.append(
            f"attacks on {what} separate members from non-members (AUC outside 0.5 +/- 0.1, interval "
            f"excluding 0.5): {'; '.join(flagged)}. {why}"
        )
    return warnings


def assemble(
    config: Config,
    data: AuditData,
    scenarios: Sequence[Scenario],
    models: AuditModels,
    prompts: Prompts,
    queries: Queries,
    quality: dict[str, Quality],
    exposed: Exposure | None,
    passes: tuple[Pass, ...],
    score_sets: Sequence[ScoreSet],
    run: Path,
    chosen: dict[str, tuple[str, str]],
    validation: dict[str, Validation],
) -> RunResult:
    """The run's result: everything it reports, with the regimes, seeds and versions that produced it."""
    audit, names, attacks = config.audit, [s.name for s in scenarios], config.attacks
    channels = tuple(config.generation.query_channels())
    rule = shadow_headline_rule(attacks.headline_fpr, attacks.headline_folds) if attacks.headline == "shadow" else None
    return RunResult(
        name=audit.name,
        diffmia_version=__version__,
        machine=platform.platform(),
        versions=package_versions(),
        data=DataSummary(
            data.source,
            len(data.members),
            len(data.nonmembers),
            len(data.pool),
            2 * data.shadow_members(audit),
            audit.overlap,
        ),
        scenarios=tuple(names),
        channels=channels,
        queries_per_image=config.generation.queries_per_image,
        generation=config.generation.model_dump(mode="json"),
        seeds={
            "audit": audit.seed,
            "data": config.data.seed,
            "generation": config.generation.seed,
            "finetune": config.finetune.seed,
            "evaluation": config.evaluation.seed,
        },
        models=models.regimes(),
        captioners=prompts.cards,
        images_requested=dict(queries.images_requested),
        generation_quality=quality,
        warnings=tuple(control_warnings(score_sets)),
        exposed=exposed,
        headline=chosen,
        passes=passes,
        score_sets=tuple(score_sets),
        run_dir=run,
        candidate_images={s.id: str(Path(s.image_path).resolve()) for s in data.split.samples},
        headline_rule=rule or HEADLINE_RULE,
        headline_validation={
            s: [
                {
                    "channel": c,
                    "attack": a,
                    "auc": round(v.auc, 6),
                    "tpr": round(v.tpr, 6) if np.isfinite(v.tpr) else None,
                    "fpr": v.fpr,
                    "folds": v.folds,
                }
                for (c, a), v in validation[s].items()
            ]
            for s in names
            if validation[s]
        },
    )


class _Clock:
    """Seconds per stage of one pass, in the order the stages ran."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def carve(self, stage: str, part: str, seconds: float) -> None:
        """Book ``seconds`` of ``stage`` under ``part`` instead (work done lazily inside another stage)."""
        self.seconds[stage] -= seconds
        self.seconds[part] = seconds

    def finish(self) -> Pass:
        total = {**self.seconds, "total (before the report)": time.perf_counter() - self.began}
        return Pass(time.strftime("%Y-%m-%d %H:%M:%S %Z"), {k: round(v, 1) for k, v in total.items()})
