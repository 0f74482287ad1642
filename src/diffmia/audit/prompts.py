"""Stage 4 of an audit, the prompt of every candidate for each prompt source: the given captions, or captions written
by a captioner fine-tuned on the attacker's D' (:func:`prepare_prompts` fine-tunes them, once). Captions are saved in
the run directory's ``prompts.json`` as they are written, so a resumed run never captions an image twice."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from diffmia.assets import resolve_captioner
from diffmia.audit.models import ModelStore, store_of
from diffmia.captioners import BlipCaptioner, GivenCaptions
from diffmia.config import AuditConfig, CaptionerTrainingConfig
from diffmia.data import AuxiliarySet, write_subset
from diffmia.files import write_json
from diffmia.names import PromptSource, Relation
from diffmia.records import Sample

if TYPE_CHECKING:
    from diffmia.audit.plan import AuditPlan

PROMPTS_FILE = "prompts.json"
log = logging.getLogger(__name__)


class Captioner(Protocol):
    def caption_all(self, samples: Sequence[Sample]) -> list[list[str]]: ...


class Prompts:
    """The prompts of each source: the given captions, or those the source's captioner writes (lazily, once)."""

    def __init__(
        self,
        run: Path,
        captioners: Mapping[PromptSource, Captioner] | None = None,
        cards: Mapping[PromptSource, dict[str, Any]] | None = None,
    ) -> None:
        self.captioners: dict[PromptSource, Captioner] = dict(captioners or {})
        self.cards: dict[str, Any] = {str(source): card for source, card in (cards or {}).items()}
        self.path = run / PROMPTS_FILE
        self.saved: dict[str, dict[str, str | list[str]]] = (
            json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        )

    def get(self, source: PromptSource, samples: Sequence[Sample]) -> list[str]:
        """One prompt per sample: its given caption, or the captioner's (best) caption."""
        return [prompts[0] for prompts in self.get_all(source, samples)]

    def get_all(self, source: PromptSource, samples: Sequence[Sample]) -> list[list[str]]:
        """Every prompt of each sample: its given caption, or the captioner's ``audit.captions_per_image`` best
        captions (saved in prompts.json: one string per image, or a list of them when there are several)."""
        if source == PromptSource.GIVEN:
            return [[caption] for caption in GivenCaptions().caption(samples)]
        known = self.saved.setdefault(str(source), {})
        todo = [s for s in samples if s.id not in known]
        if todo:
            written = self.captioners[PromptSource(source)].caption_all(todo)
            known.update({s.id: c if len(c) > 1 else c[0] for s, c in zip(todo, written, strict=True)})
            write_json(self.path, self.saved)
        return [_listed(known[s.id]) for s in samples]


def _listed(saved: str | list[str]) -> list[str]:
    return [saved] if isinstance(saved, str) else list(saved)


def prepare_prompts(plan: AuditPlan, show_progress: bool = True) -> Prompts:
    """The prompts of the audit's scenarios: a captioner fine-tuned (or reused) on the D' of each relation whose
    scenarios query without captions, the D' that overlaps the target's members first."""
    audit, store = plan.config.audit, store_of(plan.config.audit, plan.run)
    captioners: dict[PromptSource, Captioner] = {}
    cards: dict[PromptSource, dict[str, Any]] = {}
    for scenario in sorted(plan.scenarios, key=lambda s: list(Relation).index(s.relation)):
        source = scenario.prompt_source
        if not scenario.given_caption and source not in captioners:
            relation = scenario.relation
            training = plan.config.captioner_training
            folder, cards[source] = captioner(audit, training, store, relation, plan.auxiliary[relation], show_progress)
            captioners[source] = BlipCaptioner(folder, captions_per_image=audit.captions_per_image)
    return Prompts(plan.run, captioners, cards)


def captioner(
    audit: AuditConfig,
    training: CaptionerTrainingConfig,
    store: ModelStore,
    relation: Relation,
    aux: AuxiliarySet,
    show_progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """The captioner fine-tuned on the D' of ``relation`` (trained once), or as given (``finetune_captioner =
    false``)."""
    from diffmia.lab.captioner import finetune_captioner

    if not audit.finetune_captioner:
        return Path(resolve_captioner(audit.captioner)), {"captioner": audit.captioner, "fine-tuned": False}
    recipe = {"captioner": audit.captioner, "recipe": training.model_dump(mode="json")}
    out = store.folder(f"captioner-{relation}", recipe, aux.samples)
    if not (out / "card.json").exists():
        log.info(
            f"fine-tuning the captioner ({audit.captioner}) on D' of the {relation} scenarios "
            f"({len(aux.samples)} images, {training.max_steps} steps)"
        )
        folder = write_subset(aux.samples, store.run / "splits" / f"d-prime-{relation}")
        finetune_captioner(audit.captioner, folder, out, training, show_progress=show_progress)
    return out / "captioner", json.loads((out / "card.json").read_text(encoding="utf-8"))
