"""Stage 1 of ``diffmia provenance``: every check that can fail before a query is sent (the two image folders, the
target, the base model, the captioner, the significance the test can reach), then the frozen
:class:`ProvenancePlan` and the resolved configuration written. An error here leaves nothing behind."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from diffmia.audit.models import Model, base_model, check_model_source
from diffmia.audit.plan import make_encoders
from diffmia.captioners import load_captioner
from diffmia.config import (
    Config,
    ProvenanceConfig,
    ProvenanceFile,
    dump_config,
    load_provenance_config,
    same_but_where,
)
from diffmia.data import content_digests, load_image_folder
from diffmia.encoders import Encoder
from diffmia.errors import ConfigError, DataError
from diffmia.files import atomic_path
from diffmia.images import load_rgb
from diffmia.names import PromptSource
from diffmia.provenance.crossfit import MIN_PER_CLASS
from diffmia.records import Sample
from diffmia.targets.diffusers import DiffusersTargetConfig

MAX_LISTED = 5


@dataclass(frozen=True)
class ProvenancePlan:
    """What ``diffmia provenance`` runs, fixed before any query: the file, the audit configuration that queries the
    target as the file says, the run directory, the suspects and references (``member``: suspect), the prompt
    sources, the target, the base model and the encoders."""

    file: ProvenanceFile
    config: Config
    run: Path
    suspects: tuple[Sample, ...]
    references: tuple[Sample, ...]
    sources: tuple[PromptSource, ...]
    target: Model
    base: Model
    encoders: dict[str, Encoder]

    @property
    def settings(self) -> ProvenanceConfig:
        return self.file.provenance

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The suspects, then the references, each labelled (``member``: a suspect)."""
        return (*(replace(s, member=True) for s in self.suspects), *(replace(s, member=False) for s in self.references))


def run_dir_of(file: ProvenanceFile) -> Path:
    return Path(file.provenance.runs_dir) / file.provenance.name


def validate(file: ProvenanceFile, run: Path) -> ProvenancePlan:
    """Every check before any query; then the resolved configuration is written to ``run/config.toml``."""
    settings = file.provenance
    if settings.suspects is None or settings.references is None:
        raise ConfigError("give the folder of suspects and the folder of references (provenance.suspects, .references)")
    check_run_dir(run, file)
    suspects = load_image_folder(settings.suspects).samples
    references = load_image_folder(settings.references).samples
    check_sets(suspects, references, settings)
    sources = prompt_sources(settings, (*suspects, *references))
    base = base_model_of(file)
    check_model_source("provenance.base_model", base)
    if isinstance(file.target, DiffusersTargetConfig):
        check_model_source("target.model", file.target.model)
    file.target.probe()  # an HTTP endpoint answers now, before any other work
    if PromptSource.CAPTIONER in sources and settings.captioner != "builtin":
        load_captioner(settings.captioner)  # missing weights are reported now
    config = file.audit_config()
    encoders = make_encoders(config, run)
    with atomic_path(run / "config.toml") as tmp:
        tmp.write_text(dump_config(file), encoding="utf-8")
    target = Model("target", file.target.spec(), file.target.regime())
    base_config = config.audit.model_copy(update={"base_model": base})
    return ProvenancePlan(
        file, config, run, suspects, references, sources, target, base_model(base_config, file.target), encoders
    )


def check_run_dir(run: Path, file: ProvenanceFile) -> None:
    """A run directory of another provenance question is never reused (its cache would be, its answer not)."""
    saved = run / "config.toml"
    if not saved.exists():
        return
    if not same_but_where(load_provenance_config(saved), file, "provenance"):
        raise ConfigError(
            f"{run} holds the answer to another question ({saved}); choose another --out, or delete that folder"
        )


def check_sets(suspects: tuple[Sample, ...], references: tuple[Sample, ...], settings: ProvenanceConfig) -> None:
    """Every problem of the two image folders at once: too few images for the folds, ids or images (by pixel
    content) in both, images of several sizes, and a significance the test cannot reach."""
    problems = []
    needed = settings.folds * MIN_PER_CLASS
    for name, group in (("suspects", suspects), ("references", references)):
        if len(group) < needed:
            problems.append(
                f"{len(group)} {name}: the test needs at least {needed} of each (one in each of its "
                f"{settings.folds} folds; provenance.folds sets them)"
            )
    shared_ids = sorted({s.id for s in suspects} & {s.id for s in references})
    if shared_ids:
        problems.append(f"ids in both folders (give every image a unique id): {_listed(shared_ids)}")
    suspect_of = {digest: sample_id for sample_id, digest in content_digests(suspects).items()}
    same = [f"{suspect_of[d]} = {i}" for i, d in content_digests(references).items() if d in suspect_of]
    if same:
        problems.append(f"suspects and references share images (same pixels): {_listed(same)}")
    sizes = {"suspects": _sizes(suspects), "references": _sizes(references)}
    if len(set(sizes["suspects"]) | set(sizes["references"])) > 1:
        shown = "; ".join(f"{name}: {_counted(found)}" for name, found in sizes.items())
        problems.append(f"images of several sizes ({shown}): give images of one size, resized alike")
    reachable = 1.0 / (1 + settings.permutations)
    if reachable > settings.alpha:
        problems.append(
            f"{settings.permutations} permutations give p-values of at least {reachable:.3g}, above alpha = "
            f"{settings.alpha:g}: raise provenance.permutations to at least {int(1 / settings.alpha)}"
        )
    if problems:
        raise DataError("provenance data: " + "; ".join(problems))


def _sizes(samples: tuple[Sample, ...]) -> Counter[tuple[int, int]]:
    return Counter(load_rgb(s.image_path).size for s in samples)


def _counted(sizes: Counter[tuple[int, int]]) -> str:
    return ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common())


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def prompt_sources(settings: ProvenanceConfig, samples: tuple[Sample, ...]) -> tuple[PromptSource, ...]:
    """The prompt sources to measure with; the given captions must then be there for every image."""
    captioned = all(s.caption and s.caption.strip() for s in samples)
    chosen = {
        "auto": (PromptSource.GIVEN,) if captioned else (PromptSource.CAPTIONER,),
        "given": (PromptSource.GIVEN,),
        "captioner": (PromptSource.CAPTIONER,),
        "both": (PromptSource.GIVEN, PromptSource.CAPTIONER),
    }[settings.prompts]
    if PromptSource.GIVEN in chosen and not captioned:
        missing = [s.id for s in samples if not (s.caption and s.caption.strip())]
        raise DataError(
            f"provenance.prompts = {settings.prompts!r} queries with the given captions, and {len(missing)} images "
            f'have none ({_listed(missing)}): add them to the folders\' metadata, or use prompts = "captioner"'
        )
    return chosen


def base_model_of(file: ProvenanceFile) -> str:
    """The public base model: as given, else the target's own model under its LoRA weights, else the base model a
    diffmia fine-tune's card names."""
    given = file.provenance.base_model
    if given is not None:
        return given
    target = file.target
    if isinstance(target, DiffusersTargetConfig) and target.lora is not None:
        return target.model
    if isinstance(target, DiffusersTargetConfig):
        card = Path(target.model).parent / "card.json"
        if card.is_file():
            base = json.loads(card.read_text(encoding="utf-8")).get("base_model")
            if isinstance(base, str):
                return base
    raise ConfigError(
        "the target's base model cannot be read from it: give the public model it was fine-tuned from "
        "(--base, or provenance.base_model)"
    )
