"""Executors: run queries against a target through the cache, never generating an image twice.

``generate`` looks every query up in the cache by its key, sends only the missing ones to the target in
chunks (each chunk is written to the cache as soon as it returns, so a killed run loses at most one chunk),
and returns the images in query order. Identical queries are generated once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from diffmia.cache import GenerationCache
from diffmia.errors import MissingDependencyError
from diffmia.progress import progress
from diffmia.records import Query
from diffmia.targets import Target, make_target


def missing(queries: Sequence[Query], fingerprint: str, cache: GenerationCache) -> tuple[list[str], dict[str, Query]]:
    """Every query's key, and the queries not yet cached (each distinct key once, in first-seen order)."""
    keys = [q.key(fingerprint) for q in queries]
    todo: dict[str, Query] = {}
    for key, query in zip(keys, queries, strict=True):
        if key not in cache and key not in todo:
            todo[key] = query
    return keys, todo


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
    keys, todo = missing(queries, fingerprint, cache)
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


def generate_on_ray(
    target_spec: dict[str, Any],
    queries: Sequence[Query],
    cache: GenerationCache,
    *,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    chunk_size: int = 32,
    show_progress: bool = True,
) -> list[Image.Image]:
    """Like :func:`generate`, with the missing queries spread in chunks over Ray actors.

    Each actor builds its own target from ``target_spec`` (see :func:`diffmia.targets.make_target`) and writes
    into the same cache folder, which must therefore be on storage every worker sees. ``workers`` defaults to
    the cluster's GPUs (one actor each) or else its CPUs. Keys use the workers' target fingerprint (their
    device may differ from the driver's). Images are identical to the local executor's for identical queries
    on the same device and dtype.
    """
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", extra="ray", purpose="the Ray executor") from None
    make_target(target_spec)  # validate the spec here, before any worker starts
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    if workers is None:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        workers, gpus_per_worker = (gpus, 1.0) if gpus else (max(1, int(resources.get("CPU", 1))), 0.0)
    worker_class = ray.remote(num_gpus=gpus_per_worker, num_cpus=0 if gpus_per_worker else 1)(_Worker)
    actors = [worker_class.remote(target_spec, str(cache.root)) for _ in range(workers)]
    try:
        fingerprint = ray.get(actors[0].fingerprint.remote())
        keys, todo = missing(queries, fingerprint, cache)
        pending = list(todo.values())
        chunks = [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]
        with progress(
            len(pending), "generating on ray", unit="images", enabled=show_progress and bool(pending)
        ) as advance:
            running = {actors[i % workers].generate.remote(chunk): len(chunk) for i, chunk in enumerate(chunks)}
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                ray.get(done[0])  # a worker's error is raised here
                advance(running.pop(done[0]))
    finally:
        for actor in actors:
            ray.kill(actor)
    return [cache.load(key) for key in keys]


class _Worker:
    """A Ray actor holding one target; it writes what it generates into the shared cache."""

    def __init__(self, target_spec: dict[str, Any], cache_root: str) -> None:
        self.target = make_target(target_spec)
        self.cache = GenerationCache(cache_root)

    def fingerprint(self) -> str:
        return self.target.fingerprint

    def generate(self, queries: list[Query]) -> int:
        fingerprint = self.target.fingerprint
        for query, image in zip(queries, self.target.generate(queries), strict=True):
            self.cache.put(query.key(fingerprint), image, query, fingerprint)
        return len(queries)
