"""Generation quality on the bundled digits, where the data can tell: a fine-tune that leaks may also have lost
what it was for. Each model generates from the non-members' captions (prompts it never trained on); the shipped
digit classifier reads the generations: the share that show the prompted digit, and the Fréchet distance between
generated and real non-members in the classifier's 10-d logit space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffmia.assets import CLASSIFIER_PATH
from diffmia.audit.models import Model
from diffmia.cache import GenerationCache
from diffmia.captioners import GivenCaptions
from diffmia.config import GenerationConfig
from diffmia.data import load_image_folder
from diffmia.images import load_rgb
from diffmia.lab.classifier import DigitClassifier, frechet_distance
from diffmia.queries import build_queries
from diffmia.records import Sample
from diffmia.results import Quality


def digit_quality(
    generation: GenerationConfig,
    digits: Path,
    models: Sequence[Model],
    samples: Sequence[Sample],
    cache: GenerationCache,
    show_progress: bool,
) -> dict[str, Quality]:
    """Each model's :class:`Quality` on ``samples`` of the bundled digits folder ``digits``."""
    extra = load_image_folder(digits).extra
    classifier = DigitClassifier.load(CLASSIFIER_PATH)
    settings = generation.model_copy(update={"channels": ["text2img"]})
    queries = build_queries(samples, GivenCaptions().caption(samples), settings)
    labels = np.repeat([int(extra[s.id]["label"]) for s in samples], settings.queries_per_image)  # by sample, index
    real = classifier.logits(np.stack([np.asarray(load_rgb(s.image_path)) for s in samples]))
    quality = {}
    for model in models:
        images = model.generate(queries, cache, settings, show_progress)
        generated = classifier.logits(np.stack([np.asarray(im.convert("RGB")) for im in images]))
        quality[model.name] = Quality(
            digit_accuracy=float(np.mean(generated.argmax(axis=1) == labels)),
            frechet_distance=frechet_distance(generated, real),
            generations=len(generated),
        )
    return quality
