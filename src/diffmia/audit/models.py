"""Stage 3 of an audit, the models it queries: the target (given, or fine-tuned here), the shadows (fine-tuned here
on the attacker's D', or given with their members), and the un-fine-tuned base model (a control).

Fine-tuned models are kept in a :class:`ModelStore`: the run directory's ``models/``, or a shared store where each
model is keyed by a digest of what made it (base model, recipe, training images and captions), so a study's runs
reuse each other's fine-tunes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffmia.captioners import GivenCaptions
from diffmia.config import AuditConfig, Config, FinetuneConfig, GenerationConfig
from diffmia.data import MIN_CLASS_SIZE, MembershipSplit, content_digests, load_image_folder, write_subset
from diffmia.errors import DataError, TargetError
from diffmia.execution import generate, generate_on_ray
from diffmia.files import weights_digest
from diffmia.names import Relation
from diffmia.records import Query, Sample
from diffmia.scenarios import SCENARIOS, Scenario
from diffmia.targets import Target, TargetSection, make_target
from diffmia.targets.diffusers import DiffusersTargetConfig

if TYPE_CHECKING:
    from PIL import Image

    from diffmia.audit.plan import AuditPlan
    from diffmia.cache import GenerationCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """A model the audit queries: its name in the run, how to build it (a target spec), and how it was trained."""

    name: str
    spec: dict[str, Any]
    regime: dict[str, Any]

    @functools.cached_property
    def target(self) -> Target:
        """The model as a target to query, built (and its pipeline loaded) once per audit."""
        return make_target(self.spec)

    def generate(
        self, queries: Sequence[Query], cache: GenerationCache, settings: GenerationConfig, show_progress: bool
    ) -> list[Image.Image]:
        """The images of ``queries``, through the cache, on the executor ``settings`` name."""
        if settings.executor == "local":
            return generate(self.target, queries, cache, chunk_size=settings.chunk_size, show_progress=show_progress)
        return generate_on_ray(
            self.spec,
            queries,
            cache,
            workers=settings.workers,
            chunk_size=settings.chunk_size,
            show_progress=show_progress,
        )


@dataclass(frozen=True)
class GivenShadow:
    """A shadow model fine-tuned elsewhere, its members / non-members, and the scenarios it serves."""

    model: Model
    split: MembershipSplit
    scenarios: frozenset[str]


@dataclass(frozen=True)
class ModelStore:
    """Where fine-tuned models live: ``run/models/<name>``, or ``<shared>/<name>-<digest of what made it>``."""

    run: Path
    shared: Path | None = None

    def folder(self, name: str, recipe: dict[str, Any], samples: Sequence[Sample]) -> Path:
        if self.shared is None:
            return self.run / "models" / name
        digests = content_digests(samples)
        data = sorted((digests[s.id], s.caption or "") for s in samples)
        key = hashlib.sha256(json.dumps({"recipe": recipe, "data": data}, sort_keys=True).encode()).hexdigest()[:16]
        return self.shared / f"{name}-{key}"


def store_of(audit: AuditConfig, run: Path) -> ModelStore:
    return ModelStore(run, None if audit.models_dir is None else Path(audit.models_dir))


def local_spec(target: TargetSection, model: str, lora: str | None = None) -> dict[str, Any]:
    """A target spec for a local diffusers model, with the device, dtype and batch size (and scheduler and safety
    checker) of a local ``[target]``, or the defaults beside a remote one."""
    local = target if isinstance(target, DiffusersTargetConfig) else DiffusersTargetConfig()
    return local.model_copy(update={"model": model, "lora": lora, "lora_scale": 1.0}).spec()


def base_model(audit: AuditConfig, target: TargetSection, name: str = "base", model: str | None = None) -> Model:
    """An un-fine-tuned base model (default: the audit's), queried like the target."""
    model = model or audit.base_model
    return Model(name, local_spec(target, model), {"model": model, "fine-tuned": False})


def model_identity(model: str) -> str:
    """What names a base model in the model store: a local folder by its weights (so a re-pretrained base is never
    mistaken for the old one, and a moved one still matches), ``builtin`` and hub ids by name."""
    path = Path(model)
    return f"local@{weights_digest(path)}" if model != "builtin" and path.is_dir() else model


def finetuned(
    store: ModelStore,
    target: TargetSection,
    recipe: FinetuneConfig,
    name: str,
    base: str,
    members: Sequence[Sample],
    show_progress: bool = True,
) -> Model:
    """``base`` fine-tuned on ``members`` with ``recipe`` (reused when the store already holds it)."""
    from diffmia.lab.finetune import finetune

    out = store.folder(name, {"base_model": model_identity(base), "recipe": recipe.model_dump(mode="json")}, members)
    if not (out / "card.json").exists():
        log.info(
            f"fine-tuning {name} on {len(members)} images ({recipe.method}, {recipe.total_steps(len(members))} steps)"
        )
        folder = write_subset(members, store.run / "splits" / name)
        finetune(base, folder, out, recipe, show_progress=show_progress)
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    if (out / "pipeline").is_dir():
        return Model(name, local_spec(target, str(out / "pipeline")), card)
    return Model(name, local_spec(target, base, str(out / "lora")), card)


def target_model(config: Config, store: ModelStore, members: Sequence[Sample], show_progress: bool = True) -> Model:
    """The audited model: ``[target]`` as given, or (``finetune_target``) the base fine-tuned on the members here."""
    audit = config.audit
    if audit.finetune_target:
        return finetuned(store, config.target, config.finetune, "target", audit.base_model, members, show_progress)
    return Model("target", config.target.spec(), config.target.regime())


def check_model_sources(config: Config) -> None:
    """The base model, the shadows' base model and a local target are diffusers folders or read as hub ids."""
    audit = config.audit
    check_model_source("audit.base_model", audit.base_model)
    if audit.shadow_base_model is not None:
        check_model_source("audit.shadow_base_model", audit.shadow_base_model)
    if not audit.finetune_target and isinstance(config.target, DiffusersTargetConfig):
        check_model_source("target.model", config.target.model)


def check_model_source(name: str, model: str) -> None:
    """A local model folder must be a diffusers pipeline; anything else must read as a hub id (owner/name)."""
    if model == "builtin":
        return
    path = Path(model)
    if path.exists() and not (path / "model_index.json").is_file():
        raise TargetError(f"{name} = {model!r} is not a diffusers pipeline folder (no model_index.json in it)")
    if not path.exists() and not re.fullmatch(r"[\w-][\w.-]*(/[\w-][\w.-]*)?", model):
        raise TargetError(f"{name} = {model!r}: no such folder (and not a hub id of the form owner/name)")


def given_shadows(config: Config) -> list[GivenShadow]:
    """``[[audit.given_shadows]]``: checked (model folder, LoRA, at least ten members and non-members, captions
    where a scenario queries with them) before anything is trained."""
    loaded = []
    for j, shadow in enumerate(config.audit.given_shadows):
        check_model_source(f"audit.given_shadows[{j}].model", shadow.model)
        if shadow.lora is not None and not Path(shadow.lora).exists():
            raise TargetError(f"audit.given_shadows[{j}].lora = {shadow.lora!r} does not exist")
        split = MembershipSplit(load_image_folder(shadow.members).samples, load_image_folder(shadow.nonmembers).samples)
        small = [
            f"{len(g)} {n}"
            for n, g in (("members", split.members), ("non-members", split.nonmembers))
            if len(g) < MIN_CLASS_SIZE
        ]
        if small:
            raise DataError(
                f"audit.given_shadows[{j}] has {' and '.join(small)}; a shadow needs at least {MIN_CLASS_SIZE} of each"
            )
        if any(SCENARIOS[s].given_caption for s in shadow.scenarios):
            GivenCaptions().caption(split.samples)  # a DataError naming every sample without a caption
        regime = {
            "model": shadow.model,
            "lora": shadow.lora,
            "given": True,
            "members": len(split.members),
            "nonmembers": len(split.nonmembers),
        }
        model = Model(f"given-shadow-{j}", local_spec(config.target, shadow.model, shadow.lora), regime)
        loaded.append(GivenShadow(model, split, frozenset(shadow.scenarios)))
    return loaded


@dataclass(frozen=True)
class AuditModels:
    """The target, the base model (a control), and the shadows with their splits: fine-tuned per relation of D',
    or given for a set of scenarios."""

    target: Model
    base: Model
    shadows: dict[Relation, list[tuple[Model, MembershipSplit]]]
    given: tuple[GivenShadow, ...]

    def for_scenario(self, scenario: Scenario) -> list[tuple[Model, MembershipSplit]]:
        given = [(g.model, g.split) for g in self.given if scenario.name in g.scenarios]
        return self.shadows.get(scenario.relation, []) + given

    def regimes(self) -> dict[str, dict[str, Any]]:
        regimes = {"target": self.target.regime, "base": self.base.regime}
        regimes.update({m.name: m.regime for shadows in self.shadows.values() for m, _ in shadows})
        regimes.update({g.model.name: g.model.regime for g in self.given})
        return regimes


def build_models(plan: AuditPlan, show_progress: bool = True) -> AuditModels:
    """Fine-tune (or reuse) the target and every shadow; the shadows on ``shadow_base_model`` when it is set."""
    config, store = plan.config, store_of(plan.config.audit, plan.run)
    target = target_model(config, store, plan.data.members, show_progress)
    shadow_base = config.audit.shadow_base_model or config.audit.base_model
    shadows = {
        relation: [
            (
                finetuned(
                    store,
                    config.target,
                    config.finetune,
                    f"shadow-{relation}-{j}",
                    shadow_base,
                    split.members,
                    show_progress,
                ),
                split,
            )
            for j, split in enumerate(aux.shadow_splits)
        ]
        for relation, aux in plan.auxiliary.items()
    }
    return AuditModels(target, base_model(config.audit, config.target), shadows, plan.given_shadows)
