"""Building queries: m per image and channel, each with its own seed, derived from the sample and not its order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from diffmia.records import Query, Sample

if TYPE_CHECKING:
    from diffmia.config import GenerationConfig


def query_seed(seed: int, sample_id: str, channel: str, index: int) -> int:
    """A seed that depends on the run seed, the sample, the channel and the generation index only."""
    digest = hashlib.sha256(f"{seed}:{sample_id}:{channel}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def reference_seed(seed: int) -> int:
    """The run seed of the reference queries (features.calibrate): independent of the audited models' queries."""
    return int.from_bytes(hashlib.sha256(f"{seed}:reference".encode()).digest()[:4], "big") & 0x7FFFFFFF


def build_queries(
    samples: Sequence[Sample], prompts: Sequence[str | Sequence[str]], settings: GenerationConfig
) -> list[Query]:
    """The queries of every sample: ``queries_per_image`` per channel (image-to-image: per strength), prompted with
    ``prompts`` (same order): one prompt per sample, or several, query j taking prompt j mod their number. Query j
    has the same seed at every strength, so that strengths differ by the noise level alone."""
    queries = []
    for sample, given in zip(samples, prompts, strict=True):
        options = [given] if isinstance(given, str) else list(given)
        for channel in settings.channels:
            image2image = channel == "img2img"
            for strength in settings.strengths if image2image else (None,):
                for j in range(settings.queries_per_image):
                    queries.append(
                        Query(
                            prompt=options[j % len(options)],
                            seed=query_seed(settings.seed, sample.id, channel, j),
                            steps=settings.steps,
                            guidance=settings.guidance,
                            negative_prompt=settings.negative_prompt,
                            init_image=sample.image_path if image2image else None,
                            strength=strength,
                            sample_id=sample.id,
                        )
                    )
    return queries
