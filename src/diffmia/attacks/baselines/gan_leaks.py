"""The GAN-Leaks-style full black-box baseline (Chen et al., CCS 2020), for text-to-image models.

The attacker knows nothing of the candidate but the image: it draws N generations from the target with an empty
prompt and scores each candidate by how close its nearest generation is (negated L2 distance between embeddings;
higher = more likely a member). A model that reproduces its training images unprompted would be caught; a
fine-tune that only memorises them under their captions would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from diffmia.encoders import Encoder
from diffmia.errors import DataError
from diffmia.queries import query_seed
from diffmia.records import FloatArray, Query

if TYPE_CHECKING:
    from diffmia.config import GenerationConfig


def gan_leaks_queries(n: int, settings: GenerationConfig) -> list[Query]:
    """``n`` caption-free text-to-image queries, seeded from the run's generation seed."""
    seeds = [query_seed(settings.seed, "gan-leaks", "text2img", i) for i in range(n)]
    return [Query("", seed, settings.steps, settings.guidance, settings.negative_prompt) for seed in seeds]


def nearest_generation_scores(
    candidates: Sequence[Image.Image], generations: Sequence[Image.Image], encoder: Encoder
) -> FloatArray:
    """Minus the L2 distance from each candidate's embedding to the nearest generation's (tokens flattened)."""
    if not candidates or not generations:
        raise DataError(f"need candidates and generations, got {len(candidates)} and {len(generations)}")
    a = np.asarray(encoder.encode(candidates), dtype=np.float64).reshape(len(candidates), -1)
    b = np.asarray(encoder.encode(generations), dtype=np.float64).reshape(len(generations), -1)
    squared = (a**2).sum(axis=1)[:, None] + (b**2).sum(axis=1)[None, :] - 2 * a @ b.T
    return np.asarray(-np.sqrt(np.maximum(squared.min(axis=1), 0.0)))
