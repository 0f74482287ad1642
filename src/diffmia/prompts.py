"""The prompt of every candidate for each prompt source of an audit: the given captions ("given"), or captions
written by a captioner fine-tuned on the attacker's D' ("captioner-<kind of D'>"). Captions are saved in the run
directory's ``prompts.json`` as they are written, so a resumed run never captions an image twice."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffmia.assets import resolve_captioner
from diffmia.captioners import BlipCaptioner, GivenCaptions
from diffmia.config import AuditConfig, CaptionerTrainingConfig
from diffmia.data import AuxiliarySet, write_subset
from diffmia.files import write_json
from diffmia.models import ModelStore
from diffmia.progress import Feedback
from diffmia.records import Sample
from diffmia.scenarios import KINDS, Scenario

PROMPTS_FILE = "prompts.json"


class Prompts:
    """Prompts by source; captioners are fine-tuned (or reused) when the object is made, captions written lazily."""

    def __init__(
        self,
        audit: AuditConfig,
        training: CaptionerTrainingConfig,
        store: ModelStore,
        scenarios: Sequence[Scenario],
        auxiliary: dict[str, AuxiliarySet],
        feedback: Feedback,
    ) -> None:
        self.captioners: dict[str, BlipCaptioner] = {}
        self.cards: dict[str, Any] = {}
        self.path = store.run / PROMPTS_FILE
        self.saved: dict[str, dict[str, str | list[str]]] = (
            json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        )
        for scenario in sorted(scenarios, key=lambda s: KINDS.index(s.kind)):  # D' overlap first
            source = scenario.prompt_source
            if not scenario.given_caption and source not in self.captioners:
                folder, card = captioner(audit, training, store, scenario.kind, auxiliary[scenario.kind], feedback)
                self.captioners[source] = BlipCaptioner(folder, captions_per_image=audit.captions_per_image)
                self.cards[source] = card

    def get(self, source: str, samples: Sequence[Sample]) -> list[str]:
        """One prompt per sample: its given caption, or the captioner's (best) caption."""
        return [prompts[0] for prompts in self.get_all(source, samples)]

    def get_all(self, source: str, samples: Sequence[Sample]) -> list[list[str]]:
        """Every prompt of each sample: its given caption, or the captioner's ``audit.captions_per_image`` best
        captions (saved in prompts.json: one string per image, or a list of them when there are several)."""
        if source == "given":
            return [[caption] for caption in GivenCaptions().caption(samples)]
        known = self.saved.setdefault(source, {})
        todo = [s for s in samples if s.id not in known]
        if todo:
            captioner = self.captioners[source]
            written = captioner.caption_all(todo)
            known.update({s.id: c if len(c) > 1 else c[0] for s, c in zip(todo, written, strict=True)})
            write_json(self.path, self.saved)
        return [_listed(known[s.id]) for s in samples]


def _listed(saved: str | list[str]) -> list[str]:
    return [saved] if isinstance(saved, str) else list(saved)


def captioner(
    audit: AuditConfig,
    training: CaptionerTrainingConfig,
    store: ModelStore,
    kind: str,
    aux: AuxiliarySet,
    feedback: Feedback,
) -> tuple[Path, dict[str, Any]]:
    """The captioner fine-tuned on D' of ``kind`` (trained once), or as given (``finetune_captioner = false``)."""
    from diffmia.lab.captioner import finetune_captioner

    if not audit.finetune_captioner:
        return Path(resolve_captioner(audit.captioner)), {"captioner": audit.captioner, "fine-tuned": False}
    recipe = {"captioner": audit.captioner, "recipe": training.model_dump(mode="json")}
    out = store.folder(f"captioner-{kind}", recipe, aux.samples)
    if not (out / "card.json").exists():
        feedback.log(
            f"fine-tuning the captioner ({audit.captioner}) on D' of the {kind} scenarios "
            f"({len(aux.samples)} images, {training.max_steps} steps)"
        )
        folder = write_subset(aux.samples, store.run / "splits" / f"d-prime-{kind}")
        finetune_captioner(audit.captioner, folder, out, training, show_progress=feedback.show_progress)
    return out / "captioner", json.loads((out / "card.json").read_text(encoding="utf-8"))
