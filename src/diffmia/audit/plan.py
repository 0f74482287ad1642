"""Stages 1 and 2 of an audit: validate everything that can fail before a model is trained, then split the data into
the target's candidates, the auxiliary sets D' and every shadow's members and non-members. The result is the
:class:`AuditPlan`: frozen, and all that the later stages read of the configuration and the data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diffmia.attacks.threshold import REDUCTIONS
from diffmia.audit.models import GivenShadow, check_model_sources, given_shadows
from diffmia.captioners import load_captioner
from diffmia.config import Config, DataConfig, dump_config, parse_config, read_toml, same_but_where
from diffmia.data import AuxiliarySet, MembershipSplit, check_audit_data, load_image_folder, plan_auxiliary
from diffmia.encoders import Encoder, encoder_name, gives_tokens, make_encoder
from diffmia.errors import ConfigError, DataError
from diffmia.features import CachedEncoder, FeaturePlan
from diffmia.files import atomic_path, write_json
from diffmia.lab.data import write_digits
from diffmia.names import Column, Mode, Reference, Relation
from diffmia.records import Sample
from diffmia.scenarios import SCENARIOS, Scenario
from diffmia.targets import TARGETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditData:
    """The audit's images: the target's candidates and the attacker's auxiliary pool, and where they came from."""

    members: tuple[Sample, ...]
    nonmembers: tuple[Sample, ...]
    pool: tuple[Sample, ...]
    source: str

    @property
    def split(self) -> MembershipSplit:
        return MembershipSplit(self.members, self.nonmembers)


@dataclass(frozen=True)
class AuditPlan:
    """What the audit runs, fixed before any model is trained: the checked configuration and data, the run
    directory, the scenarios in the order they are reported, the given shadows, the encoders, and (once split) the
    auxiliary set D' of each relation the scenarios need."""

    config: Config
    run: Path
    scenarios: tuple[Scenario, ...]
    data: AuditData
    given_shadows: tuple[GivenShadow, ...]
    encoders: dict[str, Encoder]
    auxiliary: dict[Relation, AuxiliarySet] = field(default_factory=dict)

    @property
    def shadow_members(self) -> int:
        return self.config.audit.shadow_members or len(self.data.members)

    def describe(self) -> str:
        data, audit = self.data, self.config.audit
        return (
            f"data: {len(data.members)} members, {len(data.nonmembers)} non-members, {len(data.pool)} auxiliary "
            f"({data.source}); scenarios {', '.join(s.name for s in self.scenarios)}; D' of "
            f"{2 * self.shadow_members} images, {audit.shadows} shadow(s) each"
        )


def run_dir_of(config: Config) -> Path:
    return Path(config.audit.runs_dir) / config.audit.name


def validate(config: Config, run: Path) -> AuditPlan:
    """Every check that can fail before a model is trained; then the resolved configuration is written."""
    audit = config.audit
    scenarios = tuple(SCENARIOS[s] for s in dict.fromkeys(audit.scenarios))
    check_threshold_feature(config)
    check_run_dir(run, config)
    data = load_data(config.data, run)
    check_audit_data(
        data.members,
        data.nonmembers,
        data.pool,
        [s.name for s in scenarios],
        members_need_captions=audit.finetune_target,
    )
    shadows = given_shadows(config)
    check_model_sources(config)
    if not audit.finetune_target:
        config.target.probe()  # an HTTP endpoint answers now, not after hours of training
    if any(not s.given_caption for s in scenarios) and audit.captioner not in ("builtin", "tiny"):
        load_captioner(audit.captioner)  # missing weights are reported now, not after the shadows are trained
    encoders = make_encoders(config, run)
    with atomic_path(run / "config.toml") as tmp:
        tmp.write_text(dump_config(config), encoding="utf-8")
    return AuditPlan(config, run, scenarios, data, tuple(shadows), encoders)


def check_threshold_feature(config: Config) -> None:
    """``[attacks.threshold] reduce``, when it names a feature, names one this audit computes, without its channel:
    the attack runs on each channel's table and on all channels together (there on the mean of the feature's
    columns), so a channel's name or a column index would mean a different feature in each."""
    reduce = config.attacks.threshold.reduce
    if "threshold" not in config.attacks.use or reduce in REDUCTIONS:
        return
    features = config.features
    plan = FeaturePlan(tuple(features.distances), tuple(features.granularities), tuple(features.aggregations))
    references = [Reference.NONE]
    if features.calibrate:
        references.append(Reference.BASE)
    if features.outsiders:
        references.append(Reference.OUTSIDERS)
    encoders = {encoder_name(name): gives_tokens(name) for name in dict.fromkeys(features.encoders)}
    planned = plan.columns(encoders, references)
    where = "attacks.threshold.reduce"
    if isinstance(reduce, int):
        raise ConfigError(
            f"{where} = {reduce} would be column {reduce} of each table, a different feature in each "
            f"channel's table and in the combined one: name the feature instead (e.g. {str(planned[0])!r})"
        )
    wanted = Column.parse(reduce)
    if wanted is not None and wanted.channel is not None and wanted.channel in set(Mode):
        raise ConfigError(
            f"{where} {reduce!r}: name the feature without its channel ({str(wanted.feature)!r}); the attack runs "
            "on each channel's table and on all channels together"
        )
    if wanted is None or not any(column.matches(wanted) for column in planned):
        raise ConfigError(
            f"{where} {reduce!r} is none of the features this audit computes: {', '.join(map(str, planned))} "
            "(# numbers the encoder's tokens or hidden units)"
        )


def check_run_dir(run: Path, config: Config) -> None:
    """A run directory of another configuration is never reused (its models and splits belong to that one).
    Where the folder lives (``audit.runs_dir`` and ``audit.name``) is not part of what it holds: a moved run
    resumes."""
    saved = run / "config.toml"
    if not saved.exists():
        return
    if not same_but_where(_saved_config(saved), config, "audit"):
        raise ConfigError(
            f"{run} holds a run of a different configuration ({saved}); choose another audit.name or runs_dir, "
            "or delete that folder"
        )


def _saved_config(path: Path) -> Config:
    """A run directory's resolved configuration. diffmia 0.1 wrote the keys of every target kind into its
    ``[target]``; the keys of the kinds it is not are dropped (the file is diffmia's own, never a user's)."""
    data = read_toml(path)
    target = data.get("target")
    kind = TARGETS.get(str(target.get("kind", "diffusers"))) if isinstance(target, dict) else None
    if isinstance(target, dict) and kind is not None:
        data["target"] = {k: v for k, v in target.items() if k in kind.model_fields}
    return parse_config(data, str(path))


def load_data(data: DataConfig, run: Path) -> AuditData:
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
        members, nonmembers, pool = (f.samples for f in folders)
        return AuditData(members, nonmembers, pool, "folders")
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
    chosen = tuple(private[i] for i in order)
    return AuditData(chosen[:n_m], chosen[n_m : n_m + n_n], chosen[n_m + n_n :], "bundled digits (private split)")


def make_encoders(config: Config, run: Path) -> dict[str, Encoder]:
    """The configured encoders by short name, each behind the run's embedding cache; hub weights load now."""
    encoders: dict[str, Encoder] = {}
    for name in dict.fromkeys(config.features.encoders):
        encoder = make_encoder(name, config.features.pixel_size)
        load = getattr(encoder, "load", None)
        if load is not None:
            load()  # missing weights are reported before any model is trained or queried
        encoders[encoder_name(name)] = CachedEncoder(encoder, run / "embeddings")
    return encoders


def split(plan: AuditPlan) -> AuditPlan:
    """D' of each relation the scenarios need, drawn with the audit's seed; all splits saved in ``splits.json``."""
    audit, relations = plan.config.audit, list(Relation)
    auxiliary = {
        relation: plan_auxiliary(
            relation,
            plan.data.split,
            plan.data.pool,
            shadow_members=plan.shadow_members,
            overlap=audit.overlap,
            n_shadows=audit.shadows,
            rng=np.random.default_rng([audit.seed, relations.index(relation)]),
        )
        for relation in relations
        if any(s.relation == relation for s in plan.scenarios)
    }
    splits = {"target": plan.data.split.to_dict(), "auxiliary": {str(r): a.to_dict() for r, a in auxiliary.items()}}
    write_json(plan.run / "splits.json", splits)
    return replace(plan, auxiliary=auxiliary)
