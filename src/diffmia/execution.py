"""Executors: run queries against a target through the cache, never generating an image twice.

``generate`` looks every query up in the cache by its key, sends only the missing ones to the target in
chunks (each chunk is written to the cache as soon as it returns, so a killed run loses at most one chunk),
and returns the images in query order. Identical queries are generated once.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from diffmia.cache import GenerationCache
from diffmia.progress import progress
from diffmia.records import Query
from diffmia.targets import Target


def generate(
    target: Target,
    queries: Sequence[Query],
    cache: GenerationCache,
    *,
    chunk_size: int = 32,
    show_progress: bool = True,
) -> list[Image.Image]:
    """The image of every query, from the cache or (once) from the target."""
    fingerprint = target.fingerprint
    keys = [q.key(fingerprint) for q in queries]
    todo: dict[str, Query] = {}
    for key, query in zip(keys, queries, strict=True):
        if key not in cache and key not in todo:
            todo[key] = query
    pending = list(todo.items())
    fresh: dict[str, Image.Image] = {}
    with progress(len(pending), "generating", unit="images", enabled=show_progress and bool(pending)) as advance:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            images = target.generate([q for _, q in chunk])
            for (key, query), image in zip(chunk, images, strict=True):
                cache.put(key, image, query, fingerprint)
                fresh[key] = image
            advance(len(chunk))
    return [fresh[key] if key in fresh else cache.load(key) for key in keys]
