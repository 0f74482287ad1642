"""The Ray executor: actors build their own targets, write into the shared cache, and match the local executor."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from diffmia.cache import GenerationCache
from diffmia.errors import ConfigError
from diffmia.execution import generate, generate_on_ray
from diffmia.records import Query
from diffmia.targets import make_target

CAPTIONS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_local_and_reuses_the_cache(ray_cluster, tiny_model, tmp_path):
    spec = {"kind": "diffusers", "model": str(tiny_model), "device": "cpu", "dtype": "float64", "batch_size": 2}
    queries = [Query(CAPTIONS[i % 2], seed=i, steps=3, guidance=3.0) for i in range(6)]
    cache = GenerationCache(tmp_path / "ray")
    remote = generate_on_ray(spec, queries, cache, workers=2, chunk_size=2, show_progress=False)
    local = generate(make_target(spec), queries, GenerationCache(tmp_path / "local"), show_progress=False)
    np.testing.assert_array_equal(np.stack([np.asarray(i) for i in remote]), np.stack([np.asarray(i) for i in local]))
    assert cache.verify() == (6, [])
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.png")}
    again = generate_on_ray(spec, queries, cache, workers=2, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.png")} == written  # nothing regenerated
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(remote[0]))


def test_bad_spec_fails_before_workers_start(tmp_path):
    with pytest.raises(ConfigError, match="unknown target kind 'comfy'"):
        generate_on_ray({"kind": "comfy"}, [], GenerationCache(tmp_path))
