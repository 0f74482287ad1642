"""Peer baselines scored in the audit's harness and metrics, each needing no shadow model.

- ``gan-leaks``: full black-box, caption-free (GAN-Leaks style): a candidate's similarity to its nearest
  neighbour among N generations of the target from an empty prompt.
- ``loss``, ``secmi``, ``pia``: reference attacks that need the target's weights (a local diffusers pipeline): the
  denoising loss, SecMI's step-wise posterior estimation error and PIA's proximal-initialisation error.

:data:`BASELINES` is their registry: where each one's evidence comes from, and how it scores a set of candidates
(:class:`Candidates`). A new baseline is a scoring function and one line here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from diffmia.attacks.baselines.gan_leaks import gan_leaks_queries, nearest_generation_scores
from diffmia.attacks.baselines.graybox import GRAYBOX_ATTACKS, graybox_scores
from diffmia.encoders import Encoder
from diffmia.names import NO_CHANNEL, WEIGHTS
from diffmia.records import FloatArray, Query
from diffmia.registry import Registry

if TYPE_CHECKING:
    from diffmia.config import GenerationConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidates:
    """What a baseline scores: the candidates' images and the scenario's prompt of each, on one model (its target,
    to read weights from, and a way to query it through the run's cache), with the run's settings."""

    model: str
    images: Sequence[Image.Image]
    prompts: Sequence[str]
    prompts_from: str  # where the prompts come from, in words (for the log)
    target: Any  # the model's Target (a local DiffusersTarget where the baseline reads weights)
    generate: Callable[[Sequence[Query]], list[Image.Image]]
    encoder: Encoder
    generation: GenerationConfig
    samples: int  # caption-free generations (audit.gan_leaks_samples)
    seed: int


@dataclass(frozen=True)
class Baseline:
    """A shadow-free attack: the evidence it reads (the model's ``weights``, or generations of no query channel:
    ``none``), whether its scores depend on the prompts, and its scoring function (higher = member)."""

    evidence: str
    score: Callable[[Candidates], FloatArray]
    caption_free: bool = False


def gan_leaks(candidates: Candidates) -> FloatArray:
    """GAN-Leaks: the nearest of ``samples`` caption-free generations, in the first encoder's space."""
    log.info(f"GAN-Leaks baseline: {candidates.samples} caption-free generations of {candidates.model}")
    generated = candidates.generate(gan_leaks_queries(candidates.samples, candidates.generation))
    return nearest_generation_scores(candidates.images, generated, candidates.encoder)


def graybox(attack: str) -> Callable[[Candidates], FloatArray]:
    """The gray-box ``attack`` on the model's weights with the scenario's prompts."""

    def score(candidates: Candidates) -> FloatArray:
        log.info(f"gray-box baseline {attack} on {candidates.model}'s weights ({candidates.prompts_from} prompts)")
        pipe = candidates.target.pipeline()  # a local DiffusersTarget (the configuration checks it)
        return graybox_scores(pipe, candidates.images, candidates.prompts, attack, seed=candidates.seed)

    return score


BASELINES: Registry[Baseline] = Registry(
    "baseline",
    {
        "gan-leaks": Baseline(NO_CHANNEL, gan_leaks, caption_free=True),
        **{name: Baseline(WEIGHTS, graybox(name)) for name in GRAYBOX_ATTACKS},
    },
)

__all__ = [
    "BASELINES",
    "GRAYBOX_ATTACKS",
    "Baseline",
    "Candidates",
    "gan_leaks_queries",
    "graybox_scores",
    "nearest_generation_scores",
]
