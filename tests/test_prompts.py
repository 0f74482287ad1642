"""Where an audit's prompts come from: the given captions, or a captioner fine-tuned on D' (or used as shipped)."""

from __future__ import annotations

from pathlib import Path

from diffmia.assets import resolve_captioner
from diffmia.config import AuditConfig, CaptionerTrainingConfig
from diffmia.data import AuxiliarySet
from diffmia.models import ModelStore
from diffmia.progress import Feedback
from diffmia.prompts import captioner
from diffmia.records import Sample


def test_a_captioner_not_fine_tuned_is_the_shipped_one_and_trains_nothing(tmp_path):
    """``finetune_captioner = false``: the captioner as given, recorded as not fine-tuned; no model folder, no log."""
    aux = AuxiliarySet("disjoint", (Sample("a", Path("a.png"), "a seven"),), (), 0)
    lines: list[str] = []
    audit = AuditConfig(finetune_captioner=False)
    path, card = captioner(audit, CaptionerTrainingConfig(), ModelStore(tmp_path), "disjoint", aux,
                           Feedback(lines.append, show_progress=False))  # fmt: skip
    assert path == Path(resolve_captioner(audit.captioner)) and (path / "config.json").is_file()
    assert card == {"captioner": audit.captioner, "fine-tuned": False}
    assert lines == [] and list(tmp_path.iterdir()) == []
