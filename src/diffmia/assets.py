"""What diffmia ships: the one place that knows where its packaged files lie and what ``builtin`` means.

The built-in base model, captioner and digit classifier were made by :mod:`diffmia.lab` and lie under
``lab/assets/``, but an audit only *reads* them: resolving a name to a path must not import the lab (torch,
training code), so product code asks this module and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from diffmia.errors import TargetError

BUILTIN = "builtin"
ASSETS_DIR = Path(__file__).parent / "lab" / "assets"
BASE_DIR = ASSETS_DIR / "base"  # the built-in base: pipeline/ and the card.json of its pretraining
CAPTIONER_DIR = ASSETS_DIR / "captioner"  # the built-in captioner: captioner/ and the card.json of its training
CLASSIFIER_PATH = ASSETS_DIR / "digit_classifier.json"
DEMO_CONFIG = Path(__file__).parent / "demo.toml"
# the built-in audits (`diffmia demo --preset NAME`): the over-fitted demo, and LoRA fine-tunes in the regime users
# audit (more images, adapters, the fewest passes at which the target measurably memorises)
DEMO_PRESETS = {"standard": DEMO_CONFIG, "realistic": Path(__file__).parent / "demo-realistic.toml"}


def resolve_model(model: str | Path) -> str:
    """``builtin`` is the shipped tiny base; anything else is a local folder or a hub id, as given."""
    if str(model) == BUILTIN:
        return _shipped(BASE_DIR / "pipeline", "model_index.json", "base model")
    return str(model)


def resolve_captioner(model: str | Path) -> str:
    """``builtin`` is the shipped tiny BLIP; anything else is a folder or a hub id, as given.

    ``tiny`` is not a shipped file: it asks :func:`diffmia.lab.captioner.finetune_captioner` to build a fresh
    BLIP, so it passes through here unchanged.
    """
    if str(model) == BUILTIN:
        return _shipped(CAPTIONER_DIR / "captioner", "config.json", "captioner")
    return str(model)


def _shipped(folder: Path, marker: str, what: str) -> str:
    """``folder`` as a string, after checking the installation really holds it (a partial install fails here)."""
    if not (folder / marker).is_file():
        raise TargetError(f"the built-in {what} is missing from {folder}; reinstall diffmia")
    return str(folder)
