"""The audit: one numbered recipe from a configuration to a run directory.

1. validate the configuration and the data (every problem at once, before any model is touched)
2. split: the target's members / non-members, the auxiliary sets D' and every shadow's members / non-members
3. models: the target (given, or fine-tuned here), the shadows (fine-tuned here, or given), the base (control)
4. prompts: the given captions, or captions from a captioner fine-tuned on D'
5. generate: every query through the cache (resumable; nothing is generated twice)
6. features: query image vs its generations, per channel (embeddings cached)
7. attacks: fitted on the pooled shadow features only, frozen, applied once to the target and the base model
8. evaluate, and write the run directory: splits, features, scores, result.json, report.html

A run killed at any point restarts where it stopped (finished fine-tunes and captioners, cached generations
and embeddings are reused); rerunning a finished run gives identical numbers.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffmia import __version__
from diffmia.attacks import fit_attacks, score_with
from diffmia.attacks.baselines import gan_leaks_queries, graybox_scores, nearest_generation_scores
from diffmia.cache import GenerationCache
from diffmia.captioners import GivenCaptions
from diffmia.config import Config, dump_config, load_config
from diffmia.data import (
    MIN_CLASS_SIZE,
    SCENARIOS,
    AuxiliarySet,
    MembershipSplit,
    check_audit_data,
    content_digests,
    load_image_folder,
    plan_auxiliary,
    write_subset,
)
from diffmia.encoders import PixelEncoder, load_rgb, weights_digest
from diffmia.errors import ConfigError, DataError, TargetError
from diffmia.features import CachedEncoder, Encoder, blind_features, build_features
from diffmia.queries import build_queries
from diffmia.records import FeatureTable, Query, Sample, ScoreSet
from diffmia.tables import atomic_path

if TYPE_CHECKING:
    from PIL import Image

    from diffmia.targets import Target

KINDS = ("overlap", "disjoint")
COMBINED = "combined"
MODELS = ("target", "base", "blind")
# where a baseline's evidence comes from: caption-free generations ("none": no query channel), or the weights
BASELINE_CHANNELS = {"gan-leaks": "none", "loss": "weights", "secmi": "weights", "pia": "weights"}


@dataclass(frozen=True)
class Model:
    """A model the audit queries: its name in the run, how to build it, and how it was trained."""

    name: str
    spec: dict[str, Any]
    regime: dict[str, Any]

    @functools.cached_property
    def target(self) -> Target:
        """The model as a target to query, built (and its pipeline loaded) once per audit."""
        from diffmia.targets import make_target

        return make_target(self.spec)


@dataclass(frozen=True)
class AuditResult:
    """What a run produced: every score set and the summary written to ``result.json``."""

    run_dir: Path
    score_sets: tuple[ScoreSet, ...]
    summary: dict[str, Any]


def run_dir_of(config: Config) -> Path:
    return Path(config.audit.runs_dir) / config.audit.name


def run_audit(
    config: Config, run_dir: str | Path | None = None, *, show_progress: bool = True, log: Callable[[str], None] = print
) -> AuditResult:
    """Run the audit of ``config`` into ``run_dir`` (default ``runs_dir/name``); see the module docstring."""
    began = time.perf_counter()
    timings: dict[str, float] = {}
    run = Path(run_dir) if run_dir is not None else run_dir_of(config)
    audit = config.audit
    scenarios: list[str] = list(dict.fromkeys(audit.scenarios))

    # 1. validate
    stage = time.perf_counter()
    _check_run_dir(run, config)
    members, nonmembers, pool, data_source = _load_data(config, run)
    check_audit_data(members, nonmembers, pool, scenarios, members_need_captions=audit.finetune_target)
    given_shadows = _load_given_shadows(config)
    check_model_sources(config)
    if any(SCENARIOS[s][0] == "captioner" for s in scenarios) and audit.captioner not in ("builtin", "tiny"):
        from diffmia.captioners import load_captioner

        load_captioner(audit.captioner)  # missing weights are reported now, not after the shadows are trained
    encoders = _encoders(config, run)
    _write_config(run, config)
    target_split = MembershipSplit(tuple(members), tuple(nonmembers))

    # 2. split
    kinds = [k for k in KINDS if any(SCENARIOS[s][1] == k for s in scenarios)]
    shadow_members = audit.shadow_members or len(members)
    auxiliary = {
        kind: plan_auxiliary(kind, target_split, pool, shadow_members=shadow_members, overlap=audit.overlap,
                             n_shadows=audit.shadows, rng=np.random.default_rng([audit.seed, KINDS.index(kind)]))
        for kind in kinds
    }  # fmt: skip
    splits = {"target": target_split.to_dict(), "auxiliary": {k: a.to_dict() for k, a in auxiliary.items()}}
    _write_json(run / "splits.json", splits)
    timings["validate and split"] = time.perf_counter() - stage
    log(
        f"data: {len(members)} members, {len(nonmembers)} non-members, {len(pool)} auxiliary ({data_source}); "
        f"scenarios {', '.join(scenarios)}; D' of {2 * shadow_members} images, {audit.shadows} shadow(s) each"
    )

    # 3. models
    stage = time.perf_counter()
    target = _target_model(config, run, members, show_progress, log)
    shadows: dict[str, list[tuple[Model, MembershipSplit]]] = {kind: [] for kind in kinds}
    for kind, aux in auxiliary.items():
        for j, split in enumerate(aux.shadow_splits):
            model = _finetuned(config, run, f"shadow-{kind}-{j}", split.members, show_progress, log,
                               base_model=audit.shadow_base_model)  # fmt: skip
            shadows[kind].append((model, split))
    base = Model("base", _spec(config, audit.base_model), {"model": audit.base_model, "fine-tuned": False})
    timings["fine-tune"] = time.perf_counter() - stage

    # 4. prompts
    stage = time.perf_counter()
    prompts = _Prompts(config, run, auxiliary, show_progress, log)
    timings["captions"] = time.perf_counter() - stage

    # 5-6. generation and features, each (model, samples, prompt source) once
    cache = GenerationCache(config.generation.cache or run / "cache")
    tables: dict[tuple[str, str], FeatureTable] = {}
    images_requested: dict[str, int] = {}

    query_time = 0.0

    def features(model: Model, samples: Sequence[Sample], source: str) -> FeatureTable:
        nonlocal query_time
        key = (model.name, source)
        if key not in tables:
            started = time.perf_counter()
            log(f"querying {model.name} with {len(samples)} images ({_source_name(source)} prompts)")
            tables[key] = _query_features(config, model, samples, prompts.get(source, samples), cache, encoders,
                                          show_progress, images_requested)  # fmt: skip
            query_time += time.perf_counter() - started
        return tables[key]

    baseline_memo: dict[tuple[str, str, str], np.ndarray] = {}

    def baseline(name: str, model: Model, source: str) -> np.ndarray:
        """A shadow-free baseline's scores of the target's candidates (caption-free ones once per model)."""
        nonlocal query_time
        key = (name, model.name, "" if name == "gan-leaks" else source)
        if key not in baseline_memo:
            started = time.perf_counter()
            samples = target_split.samples
            if name == "gan-leaks":
                log(f"GAN-Leaks baseline: {audit.gan_leaks_samples} caption-free generations of {model.name}")
                generated = _generate(config, model, gan_leaks_queries(audit.gan_leaks_samples, config.generation),
                                      cache, show_progress)  # fmt: skip
                images_requested[model.name] = images_requested.get(model.name, 0) + len(generated)
                scores = nearest_generation_scores([load_rgb(s.image_path) for s in samples], generated,
                                                   next(iter(encoders.values())))  # fmt: skip
            else:
                log(f"gray-box baseline {name} on {model.name}'s weights ({_source_name(source)} prompts)")
                pipe = model.target.pipeline()  # type: ignore[attr-defined]  # a local DiffusersTarget (config check)
                scores = graybox_scores(pipe, [load_rgb(s.image_path) for s in samples], prompts.get(source, samples),
                                        name, seed=audit.seed)  # fmt: skip
            baseline_memo[key] = scores
            query_time += time.perf_counter() - started
        return baseline_memo[key]

    # 7. attacks
    score_sets: list[ScoreSet] = []
    blind_cache: dict[str, tuple[FeatureTable, FeatureTable]] = {}
    stage = time.perf_counter()
    for scenario in scenarios:
        caption_source, kind = SCENARIOS[scenario]
        source = "given" if caption_source == "given" else f"captioner-{kind}"
        used = shadows.get(kind, []) + [(m, split) for m, split, covers in given_shadows if scenario in covers]
        shadow = _pool_tables([features(m, split.samples, source) for m, split in used])
        target_table = features(target, target_split.samples, source)
        base_table = features(base, target_split.samples, source) if audit.base_control else None
        for channel, names in _channel_sets(shadow.names, config.generation.channels).items():
            fitted = fit_attacks(config.attacks.build(), _columns(shadow, names))
            for model_name, table in (("target", target_table), ("base", base_table)):
                if table is None:
                    continue
                for attack, scores in score_with(fitted, names, _columns(table, names)).items():
                    score_sets.append(_score_set(config, scenario, model_name, channel, attack, table, scores))
        for name in audit.baselines:
            for model_name, model in (("target", target), ("base", base)):
                if model_name == "base" and not audit.base_control:
                    continue
                scores = baseline(name, model, source)
                score_sets.append(_score_set(config, scenario, model_name, BASELINE_CHANNELS[name], name, target_table,
                                             scores))  # fmt: skip
        if audit.blind_control:
            used_names = ",".join(m.name for m, _ in used)
            if used_names not in blind_cache:
                blind_cache[used_names] = _blind_tables([split for _, split in used], target_split, encoders)
            blind_shadow, blind_target = blind_cache[used_names]
            fitted = fit_attacks({"classifier": config.attacks.classifier.build()}, blind_shadow)
            for attack, scores in score_with(fitted, blind_shadow.names, blind_target).items():
                score_sets.append(_score_set(config, scenario, "blind", "none", attack, blind_target, scores))
    timings["generate and features"] = query_time
    channel_order: list[str] = [*dict.fromkeys(config.generation.channels), COMBINED, "weights", "none"]
    attack_order: list[str] = [*config.attacks.use, *audit.baselines]
    score_sets.sort(key=lambda s: (scenarios.index(s.scenario), MODELS.index(s.model), channel_order.index(s.channel),
                                   attack_order.index(s.attack) if s.model != "blind" else 0))  # fmt: skip
    timings["attacks and evaluation"] = time.perf_counter() - stage - query_time

    # generation quality, where the data can tell (the bundled digits and their classifier)
    stage = time.perf_counter()
    quality: dict[str, Any] = {}
    if config.data.builtin:
        rated = [target, base] if audit.base_control else [target]
        other = audit.shadow_base_model
        if other is not None and other != audit.base_model:  # how good is the shadows' other base model?
            rated.append(Model("shadow-base", _spec(config, other), {"model": other, "fine-tuned": False}))
        quality = _digit_quality(config, run, rated, target_split.nonmembers, cache, show_progress)
    timings["generation quality"] = time.perf_counter() - stage

    # 8. write the run directory
    stage = time.perf_counter()
    _write_features(run / "features.parquet", tables)
    _write_scores(run / "scores.parquet", score_sets)
    exposed = _most_exposed(config, score_sets, target, target_split, prompts, cache, scenarios)
    models = {"target": target.regime, "base": base.regime}
    for kind_shadows in shadows.values():
        models.update({m.name: m.regime for m, _ in kind_shadows})
    models.update({m.name: m.regime for m, _, _ in given_shadows})
    timings["write"] = time.perf_counter() - stage
    timings["total (before the report)"] = time.perf_counter() - began
    summary = {
        "diffmia_version": __version__,
        "name": audit.name,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.platform(),
        "versions": _versions(),
        "data": {
            "source": data_source,
            "members": len(members),
            "nonmembers": len(nonmembers),
            "auxiliary": len(pool),
            "d_prime_size": 2 * shadow_members,
            "overlap": audit.overlap,
        },
        "scenarios": scenarios,
        "queries_per_image": config.generation.queries_per_image,
        "channels": list(config.generation.channels),
        "generation": config.generation.model_dump(mode="json"),
        "seeds": {
            "audit": audit.seed,
            "data": config.data.seed,
            "generation": config.generation.seed,
            "finetune": config.finetune.seed,
            "evaluation": config.evaluation.seed,
        },
        "models": models,
        "captioners": prompts.cards,
        "images_requested": images_requested,
        "generation_quality": quality,
        "warnings": _warnings(score_sets),
        "exposed": exposed,
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "results": [
            {
                "scenario": s.scenario,
                "model": s.model,
                "channel": s.channel,
                "attack": s.attack,
                "evaluation": s.evaluation.to_dict(),
            }
            for s in score_sets
        ],
    }
    _write_json(run / "result.json", summary)
    from diffmia.report import render_report

    render_report(run)
    return AuditResult(run, tuple(score_sets), summary)


# --- 1. validation and data -------------------------------------------------------------------------------


def _check_run_dir(run: Path, config: Config) -> None:
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


def _write_config(run: Path, config: Config) -> None:
    """The resolved configuration, written once the data passed validation."""
    with atomic_path(run / "config.toml") as tmp:
        tmp.write_text(dump_config(config), encoding="utf-8")


def _load_data(config: Config, run: Path) -> tuple[list[Sample], list[Sample], list[Sample], str]:
    data = config.data
    if not data.builtin:
        # DataConfig requires all three folders together
        folders = [load_image_folder(p) for p in (data.members, data.nonmembers, data.auxiliary) if p is not None]
        ids = [s.id for f in folders for s in f.samples]
        if len(set(ids)) != len(ids):
            raise DataError("sample ids repeat across the members, non-members and auxiliary folders; "
                            "give every image a unique id in its metadata")  # fmt: skip
        members, nonmembers, pool = (list(f.samples) for f in folders)
        return members, nonmembers, pool, "folders"
    from diffmia.lab.data import write_digits

    root = run / "data" / "digits"
    if not (root / "metadata.jsonl").exists():
        write_digits(root)
    folder = load_image_folder(root)
    private = [s for s in folder.samples if folder.extra[s.id].get("split") == "private"]
    order = np.random.default_rng(data.seed).permutation(len(private))
    n_m, n_n = data.builtin_members, data.builtin_nonmembers
    if n_m + n_n >= len(private):
        raise ConfigError(f"data.builtin_members + builtin_nonmembers must leave auxiliary images of the "
                          f"{len(private)} private digits, got {n_m} + {n_n}")  # fmt: skip
    chosen = [private[i] for i in order]
    return chosen[:n_m], chosen[n_m : n_m + n_n], chosen[n_m + n_n :], "bundled digits (private split)"


def check_model_sources(config: Config) -> None:
    """The base model, the shadows' base model and a local target are diffusers folders or read as hub ids."""
    audit = config.audit
    _check_model_source("audit.base_model", audit.base_model)
    if audit.shadow_base_model is not None:
        _check_model_source("audit.shadow_base_model", audit.shadow_base_model)
    if not audit.finetune_target and config.target.kind == "diffusers":
        _check_model_source("target.model", config.target.model)


def _check_model_source(name: str, model: str) -> None:
    """A local model folder must be a diffusers pipeline; anything else must read as a hub id (owner/name)."""
    if model == "builtin":
        return
    path = Path(model)
    if path.exists() and not (path / "model_index.json").is_file():
        raise TargetError(f"{name} = {model!r} is not a diffusers pipeline folder (no model_index.json in it)")
    if not path.exists() and not re.fullmatch(r"[\w-][\w.-]*(/[\w-][\w.-]*)?", model):
        raise TargetError(f"{name} = {model!r}: no such folder (and not a hub id of the form owner/name)")


def _load_given_shadows(config: Config) -> list[tuple[Model, MembershipSplit, set[str]]]:
    loaded: list[tuple[Model, MembershipSplit, set[str]]] = []
    for j, shadow in enumerate(config.audit.given_shadows):
        _check_model_source(f"audit.given_shadows[{j}].model", shadow.model)
        if shadow.lora is not None and not Path(shadow.lora).exists():
            raise TargetError(f"audit.given_shadows[{j}].lora = {shadow.lora!r} does not exist")
        split = MembershipSplit(load_image_folder(shadow.members).samples, load_image_folder(shadow.nonmembers).samples)
        small = [f"{len(g)} {n}" for n, g in (("members", split.members), ("non-members", split.nonmembers))
                 if len(g) < MIN_CLASS_SIZE]  # fmt: skip
        if small:
            raise DataError(f"audit.given_shadows[{j}] has {' and '.join(small)}; a shadow needs at least "
                            f"{MIN_CLASS_SIZE} of each")  # fmt: skip
        if any(SCENARIOS[s][0] == "given" for s in shadow.scenarios):
            GivenCaptions().caption(split.samples)  # a DataError naming every sample without a caption
        spec = _spec(config, shadow.model, shadow.lora)
        regime = {"model": shadow.model, "lora": shadow.lora, "given": True, "members": len(split.members),
                  "nonmembers": len(split.nonmembers)}  # fmt: skip
        loaded.append((Model(f"given-shadow-{j}", spec, regime), split, set(shadow.scenarios)))
    return loaded


def _encoders(config: Config, run: Path) -> dict[str, Encoder]:
    from diffmia.encoders import HFVisionEncoder

    encoders: dict[str, Encoder] = {}
    for name in dict.fromkeys(config.features.encoders):
        encoder: Encoder
        if name == "pixels":
            encoder = PixelEncoder(config.features.pixel_size)
        else:
            encoder = HFVisionEncoder(name)
            encoder.load()  # missing weights are reported before any model is trained or queried
        short = name if name == "pixels" else Path(name.rstrip("/")).name
        encoders[short] = CachedEncoder(encoder, run / "embeddings")
    return encoders


# --- 3. models --------------------------------------------------------------------------------------------


def _spec(config: Config, model: str, lora: str | None = None) -> dict[str, Any]:
    """A target spec for a local diffusers model, with the [target] section's device, dtype and batch size."""
    base = config.target.model_copy(update={"kind": "diffusers", "model": model, "lora": lora, "lora_scale": 1.0})
    return base.spec()


def _target_model(config: Config, run: Path, members: Sequence[Sample], show_progress: bool,
                  log: Callable[[str], None]) -> Model:  # fmt: skip
    if config.audit.finetune_target:
        return _finetuned(config, run, "target", members, show_progress, log)
    spec = config.target.spec()
    regime = {k: v for k, v in spec.items() if k not in ("token_env",)}
    return Model("target", spec, {"given": True, **regime})


def _model_folder(config: Config, run: Path, name: str, recipe: dict[str, Any], samples: Sequence[Sample]) -> Path:
    """run/models/<name>, or in a shared ``audit.models_dir`` <name>-<digest of the recipe and training data>."""
    if config.audit.models_dir is None:
        return run / "models" / name
    import hashlib

    digests = content_digests(samples)
    data = sorted((digests[s.id], s.caption or "") for s in samples)
    key = hashlib.sha256(json.dumps({"recipe": recipe, "data": data}, sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.audit.models_dir) / f"{name}-{key}"


def _model_identity(model: str) -> str:
    """What names a base model in the model store: a local folder by its weights (so a re-pretrained base is never
    mistaken for the old one, and a moved one still matches), ``builtin`` and hub ids by name."""
    path = Path(model)
    return f"local@{weights_digest(path)}" if model != "builtin" and path.is_dir() else model


def _finetuned(config: Config, run: Path, name: str, members: Sequence[Sample], show_progress: bool,
               log: Callable[[str], None], base_model: str | None = None) -> Model:  # fmt: skip
    """``base_model`` (default: the audit's) fine-tuned on ``members`` with the [finetune] recipe (reused if done)."""
    from diffmia.lab.finetune import finetune

    base_model = base_model or config.audit.base_model
    out = _model_folder(config, run, name, {"base_model": _model_identity(base_model),
                                            "recipe": config.finetune.model_dump(mode="json")}, members)  # fmt: skip
    if not (out / "card.json").exists():
        log(f"fine-tuning {name} on {len(members)} images ({config.finetune.method}, "
            f"{config.finetune.total_steps(len(members))} steps)")  # fmt: skip
        folder = write_subset(members, run / "splits" / name)
        finetune(base_model, folder, out, config.finetune, show_progress=show_progress)
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    if (out / "pipeline").is_dir():
        spec = _spec(config, str(out / "pipeline"))
    else:
        spec = _spec(config, base_model, str(out / "lora"))
    return Model(name, spec, card)


# --- 4. prompts -------------------------------------------------------------------------------------------


def _source_name(source: str) -> str:
    return "given caption" if source == "given" else source.replace("-", " on D' ")


class _Prompts:
    """The prompt of every sample for each prompt source: "given" or "captioner-<kind of D'>"."""

    def __init__(self, config: Config, run: Path, auxiliary: dict[str, AuxiliarySet], show_progress: bool,
                 log: Callable[[str], None]) -> None:  # fmt: skip
        from diffmia.captioners import BlipCaptioner

        self.captioners: dict[str, BlipCaptioner] = {}
        self.cards: dict[str, Any] = {}
        self.path = run / "prompts.json"
        self.saved: dict[str, dict[str, str]] = (
            json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        )
        needed = {SCENARIOS[s][1] for s in config.audit.scenarios if SCENARIOS[s][0] == "captioner"}
        for kind in KINDS:
            if kind in needed:
                folder, card = _captioner(config, run, kind, auxiliary[kind], show_progress, log)
                self.captioners[f"captioner-{kind}"] = BlipCaptioner(folder)
                self.cards[f"captioner-{kind}"] = card

    def get(self, source: str, samples: Sequence[Sample]) -> list[str]:
        if source == "given":
            return GivenCaptions().caption(samples)
        known = self.saved.setdefault(source, {})
        todo = [s for s in samples if s.id not in known]
        if todo:
            known.update(zip((s.id for s in todo), self.captioners[source].caption(todo), strict=True))
            _write_json(self.path, self.saved)
        return [known[s.id] for s in samples]


def _captioner(config: Config, run: Path, kind: str, aux: AuxiliarySet, show_progress: bool,
               log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """The captioner fine-tuned on D' of ``kind`` (trained once), or as given (``finetune_captioner = false``)."""
    from diffmia.lab.captioner import finetune_captioner, resolve_captioner

    if not config.audit.finetune_captioner:
        return Path(resolve_captioner(config.audit.captioner)), {"captioner": config.audit.captioner,
                                                                 "fine-tuned": False}  # fmt: skip
    recipe = {"captioner": config.audit.captioner, "recipe": config.captioner_training.model_dump(mode="json")}
    out = _model_folder(config, run, f"captioner-{kind}", recipe, aux.samples)
    if not (out / "card.json").exists():
        log(f"fine-tuning the captioner ({config.audit.captioner}) on D' of the {kind} scenarios "
            f"({len(aux.samples)} images, {config.captioner_training.max_steps} steps)")  # fmt: skip
        folder = write_subset(aux.samples, run / "splits" / f"d-prime-{kind}")
        finetune_captioner(config.audit.captioner, folder, out, config.captioner_training, show_progress=show_progress)
    return out / "captioner", json.loads((out / "card.json").read_text(encoding="utf-8"))


# --- 5-6. generation and features -------------------------------------------------------------------------


def _query_features(
    config: Config,
    model: Model,
    samples: Sequence[Sample],
    prompts: Sequence[str],
    cache: GenerationCache,
    encoders: dict[str, Encoder],
    show_progress: bool,
    images_requested: dict[str, int],
) -> FeatureTable:
    """Generate (through the cache) and compare: one row per sample, columns ``channel/encoder/...``."""
    settings = config.generation
    m = settings.queries_per_image
    originals = [load_rgb(s.image_path) for s in samples]
    ids = tuple(s.id for s in samples)
    labels = np.array([bool(s.member) for s in samples]) if all(s.member is not None for s in samples) else None
    parts = []
    for channel in dict.fromkeys(settings.channels):
        # one channel at a time: every chunk holds queries of one kind, which the target runs as one batch
        queries = build_queries(samples, prompts, settings.model_copy(update={"channels": [channel]}))
        images = _generate(config, model, queries, cache, show_progress)
        images_requested[model.name] = images_requested.get(model.name, 0) + len(images)
        generations = [images[i * m : (i + 1) * m] for i in range(len(samples))]  # by sample, then index
        table = build_features(
            ids, originals, generations, encoders, distances=config.features.distances,
            granularities=config.features.granularities, aggregations=config.features.aggregations, labels=labels,
        )  # fmt: skip
        parts.append(FeatureTable(ids, table.X, tuple(f"{channel}/{n}" for n in table.names), labels))
    return FeatureTable(ids, np.hstack([p.X for p in parts]), tuple(n for p in parts for n in p.names), labels)


def _generate(config: Config, model: Model, queries: Sequence[Query], cache: GenerationCache,
              show_progress: bool) -> list[Image.Image]:  # fmt: skip
    """The images of ``queries`` from ``model``, through the cache, on the configured executor."""
    from diffmia.execution import generate, generate_on_ray

    settings = config.generation
    if settings.executor == "local":
        return generate(model.target, queries, cache, chunk_size=settings.chunk_size,
                        show_progress=show_progress)  # fmt: skip
    return generate_on_ray(model.spec, queries, cache, workers=settings.workers, chunk_size=settings.chunk_size,
                           show_progress=show_progress)  # fmt: skip


def _digit_quality(config: Config, run: Path, models: Sequence[Model], samples: Sequence[Sample],
                   cache: GenerationCache, show_progress: bool) -> dict[str, Any]:  # fmt: skip
    """Generation quality on the bundled digits, per model: its text-to-image generations from the non-members'
    captions (prompts it never trained on) read by the shipped digit classifier — the share that show the prompted
    digit, and the Fréchet distance to the real non-members in the classifier's 10-d logit space."""
    from diffmia.lab.classifier import CLASSIFIER_PATH, DigitClassifier, frechet_distance

    extra = load_image_folder(run / "data" / "digits").extra
    classifier = DigitClassifier.load(CLASSIFIER_PATH)
    settings = config.generation.model_copy(update={"channels": ["text2img"]})
    queries = build_queries(samples, GivenCaptions().caption(samples), settings)
    labels = np.repeat([int(extra[s.id]["label"]) for s in samples], settings.queries_per_image)  # by sample, index
    real = classifier.logits(np.stack([np.asarray(load_rgb(s.image_path)) for s in samples]))
    quality: dict[str, Any] = {}
    for model in models:
        generated = classifier.logits(np.stack([np.asarray(im.convert("RGB")) for im in
                                                _generate(config, model, queries, cache, show_progress)]))  # fmt: skip
        quality[model.name] = {
            "digit_accuracy": float(np.mean(generated.argmax(axis=1) == labels)),
            "frechet_distance": frechet_distance(generated, real),
            "generations": len(generated),
        }
    return quality


def _pool_tables(tables: Sequence[FeatureTable]) -> FeatureTable:
    """Several shadows' tables as one (rows stacked; ids made unique by the shadow's position)."""
    if len(tables) == 1:
        return tables[0]
    ids = tuple(f"{k}:{i}" for k, t in enumerate(tables) for i in t.sample_ids)
    labels = np.concatenate([t.y for t in tables if t.y is not None])
    return FeatureTable(ids, np.vstack([t.X for t in tables]), tables[0].names, labels)


def _channel_sets(names: Sequence[str], channels: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The feature columns of each channel alone, and of all channels together when there are several."""
    sets = {c: tuple(n for n in names if n.startswith(f"{c}/")) for c in dict.fromkeys(channels)}
    if len(sets) > 1:
        sets[COMBINED] = tuple(names)
    return sets


def _columns(table: FeatureTable, names: tuple[str, ...]) -> FeatureTable:
    index = [table.names.index(n) for n in names]
    return FeatureTable(table.sample_ids, table.X[:, index], names, table.y)


def _blind_tables(
    shadow_splits: Sequence[MembershipSplit], target: MembershipSplit, encoders: dict[str, Encoder]
) -> tuple[FeatureTable, FeatureTable]:
    """Model-free features of the shadows' query images and of the target's, with their labels."""

    def table(split: MembershipSplit) -> FeatureTable:
        samples = split.samples
        labels = np.array([bool(s.member) for s in samples])
        images = [load_rgb(s.image_path) for s in samples]
        return blind_features(tuple(s.id for s in samples), images, encoders, labels)

    return _pool_tables([table(split) for split in shadow_splits]), table(target)


def _score_set(config: Config, scenario: str, model: str, channel: str, attack: str, table: FeatureTable,
               scores: np.ndarray) -> ScoreSet:  # fmt: skip
    assert table.y is not None  # target samples carry their labels (the evaluation needs them)
    evaluation = config.evaluation.evaluate(scores, table.y, threshold=0.0)
    return ScoreSet(scenario, model, channel, attack, table.sample_ids, scores, table.y, evaluation)


# --- 8. outputs -------------------------------------------------------------------------------------------


def _write_json(path: Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _write_features(path: Path, tables: dict[tuple[str, str], FeatureTable]) -> None:
    """All feature tables in one Parquet file: one row per (model, prompt source, sample)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for (model, source), table in tables.items():
        columns: dict[str, Any] = {
            "model": [model] * len(table), "prompts": [source] * len(table), "sample_id": list(table.sample_ids),
            "member": table.y if table.y is not None else [None] * len(table),
        }  # fmt: skip
        columns.update({name: table.X[:, i] for i, name in enumerate(table.names)})
        parts.append(pa.table(columns))
    with atomic_path(path) as tmp:
        pq.write_table(pa.concat_tables(parts), tmp)


def _write_scores(path: Path, score_sets: Sequence[ScoreSet]) -> None:
    """One row per (scenario, model, channel, attack, sample): the frozen score and the true label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {k: [] for k in ("scenario", "model", "channel", "attack", "sample_id", "member",
                                                      "score")}  # fmt: skip
    for s in score_sets:
        n = len(s.sample_ids)
        for key in ("scenario", "model", "channel", "attack"):
            columns[key] += [getattr(s, key)] * n
        columns["sample_id"] += list(s.sample_ids)
        columns["member"] += [bool(v) for v in s.labels]
        columns["score"] += [float(v) for v in s.scores]
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def headline(scenarios: Sequence[str], channels: Sequence[str], attacks: Sequence[str]) -> tuple[str, str, str]:
    """The (scenario, channel, attack) a run leads with, by a rule fixed in advance and never chosen by the
    results: the first scenario, all query channels together, the classifier (else the first attack)."""
    channel = COMBINED if len(channels) > 1 else channels[0]
    return scenarios[0], channel, "classifier" if "classifier" in attacks else attacks[0]


def _most_exposed(config: Config, score_sets: Sequence[ScoreSet], target: Model, split: MembershipSplit,
                  prompts: _Prompts, cache: GenerationCache, scenarios: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """The members the target leaks most by the :func:`headline` score set, highest scores first."""
    if config.audit.exposed == 0:
        return {}
    attacks = list(dict.fromkeys(s.attack for s in score_sets if s.model == "target"))
    key = headline(scenarios, list(config.generation.channels), attacks)
    (chosen,) = [s for s in score_sets if (s.scenario, s.model, s.channel, s.attack) == (key[0], "target", *key[1:])]
    order = np.argsort(-chosen.scores, kind="stable")
    by_id = {s.id: s for s in split.members}
    source = "given" if SCENARIOS[chosen.scenario][0] == "given" else f"captioner-{SCENARIOS[chosen.scenario][1]}"
    rows = []
    fingerprint = target.target.fingerprint
    for index in order:
        sample = by_id.get(chosen.sample_ids[index])
        if sample is None:
            continue
        (prompt,) = prompts.get(source, [sample])
        queries = build_queries([sample], [prompt], config.generation)
        rows.append({
            "sample_id": sample.id, "image": str(Path(sample.image_path).resolve()), "prompt": prompt,
            "score": float(chosen.scores[index]),
            "generations": [{"channel": q.mode, "image": str(cache.image_path(q.key(fingerprint)).resolve())}
                            for q in queries],
        })  # fmt: skip
        if len(rows) == config.audit.exposed:
            break
    return {"scenario": chosen.scenario, "channel": chosen.channel, "attack": chosen.attack, "images": rows}


def _warnings(score_sets: Sequence[ScoreSet]) -> list[str]:
    """Controls that should sit near AUC 0.5 but do not: the member / non-member split itself may be separable.

    A control is flagged when its AUC is outside 0.5 +/- 0.1 and its interval excludes 0.5 (with 100 vs 100
    samples a control's AUC alone strays that far by chance quite often).
    """
    warnings = []
    for model, what in (("base", "the un-fine-tuned base model"), ("blind", "the query images alone (blind)")):
        flagged = [
            f"{s.scenario}/{s.channel}/{s.attack} {s.evaluation.auc:.3f} "
            f"[{s.evaluation.auc_interval.low:.3f}, {s.evaluation.auc_interval.high:.3f}]"
            for s in score_sets
            if s.model == model
            and abs(s.evaluation.auc - 0.5) > 0.1
            and not s.evaluation.auc_interval.low <= 0.5 <= s.evaluation.auc_interval.high
        ]
        if flagged:
            warnings.append(
                f"attacks on {what} separate members from non-members (AUC outside 0.5 +/- 0.1, interval excluding "
                f"0.5): {'; '.join(flagged)}. Members and non-members may differ in distribution, so the target's "
                "numbers overstate what membership alone explains"
            )
    return warnings


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "peft", "accelerate", "scikit-learn", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
