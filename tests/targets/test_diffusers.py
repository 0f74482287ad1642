"""The diffusers target and the local executor on a tiny seeded pipeline: seeds, batches, cache, kill/resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from diffmia.cache import GenerationCache
from diffmia.errors import ConfigError, TargetError
from diffmia.execution import generate
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget

CAPTIONS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]


def _queries(n, steps=2):
    return [Query(CAPTIONS[i % 2], seed=100 + i, steps=steps, guidance=3.0, sample_id=f"s{i}") for i in range(n)]


def _pixels(images):
    return np.stack([np.asarray(im) for im in images])


def test_same_seed_same_pixels_whatever_the_batch(tiny_model):
    """Per-image generators make an image independent of its batch. In float32, multithreaded CPU kernels may
    round one pixel differently for another batch shape; float64 makes that vanishingly rare."""
    queries = _queries(8)
    outputs = [
        _pixels(DiffusersTarget(tiny_model, batch_size=b, device="cpu", dtype="float64").generate(queries))
        for b in (1, 3, 8)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
    assert np.abs(outputs[0][0].astype(int) - outputs[0][2].astype(int)).max() > 0  # other seed, other image


def test_img2img_queries(tiny_model, tmp_path):
    target = DiffusersTarget(tiny_model, device="cpu")
    first = target.generate(_queries(1))[0]
    first.save(tmp_path / "init.png")
    query = Query(CAPTIONS[0], seed=5, steps=4, guidance=3.0, init_image=tmp_path / "init.png", strength=0.5)
    a, b = target.generate([query, query])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match=r"strength must lie in \(0, 1\]"):
        target.generate([Query("x", 1, init_image=tmp_path / "init.png", strength=1.5)])


def test_rerun_hits_the_cache_with_zero_model_calls(tiny_model, tmp_path):
    cache = GenerationCache(tmp_path / "cache")
    queries = _queries(6) + _queries(2)  # two repeats: generated once
    target = DiffusersTarget(tiny_model, batch_size=4, device="cpu")
    first = generate(target, queries, cache, show_progress=False)
    assert target.calls == 2  # 6 distinct queries in batches of 4
    again = DiffusersTarget(tiny_model, batch_size=4, device="cpu")
    second = generate(again, queries, cache, show_progress=False)
    assert again.calls == 0
    np.testing.assert_array_equal(_pixels(first), _pixels(second))
    assert cache.verify() == (6, [])


GENERATE_SCRIPT = """
import sys
from diffmia.cache import GenerationCache
from diffmia.execution import generate
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget
captions = {captions!r}
queries = [Query(captions[i % 2], seed=100 + i, steps=10, guidance=3.0) for i in range(int(sys.argv[3]))]
target = DiffusersTarget(sys.argv[1], batch_size=2, device="cpu", dtype="float64")
generate(target, queries, GenerationCache(sys.argv[2]), chunk_size=2, show_progress=False)
"""


def test_killed_generation_resumes_complete_and_identical(tiny_model, tmp_path):
    script = GENERATE_SCRIPT.format(captions=CAPTIONS)
    cache_dir = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-c", script, str(tiny_model), str(cache_dir), "40"])
    deadline = time.monotonic() + 300
    while len(list(cache_dir.glob("*/*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(list(cache_dir.glob("*/*.json")))
    assert 2 <= done_before < 40, "the run finished before it could be killed"
    queries = [Query(CAPTIONS[i % 2], seed=100 + i, steps=10, guidance=3.0) for i in range(40)]
    target = DiffusersTarget(tiny_model, batch_size=2, device="cpu", dtype="float64")
    resumed = generate(target, queries, GenerationCache(cache_dir), chunk_size=2, show_progress=False)
    assert target.calls <= (40 - done_before + 1) // 2  # finished entries were not generated again
    entries, problems = GenerationCache(cache_dir).verify()
    assert entries == 40 and all(p.problem.startswith("image without sidecar") for p in problems)
    fresh = DiffusersTarget(tiny_model, batch_size=8, device="cpu", dtype="float64").generate(queries)
    np.testing.assert_array_equal(_pixels(resumed), _pixels(fresh))


def test_bad_target_settings(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown scheduler .fast.*LoRA weights .* do not exist"):
        DiffusersTarget(tiny_model, scheduler="fast", lora=tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetError, match="is not a diffusers pipeline folder"):
        DiffusersTarget(tmp_path / "empty")
    target = DiffusersTarget(tiny_model, scheduler="euler", device="cpu")
    assert len(target.generate(_queries(1))) == 1
    assert "scheduler=euler" in target.fingerprint


def test_fingerprint_is_the_weights_not_the_folder(tiny_model, tmp_path):
    """A copied or moved model folder keeps its cache; one changed weight file makes it another model."""
    import shutil

    copy = shutil.copytree(tiny_model, tmp_path / "moved" / "pipeline")
    original, moved = DiffusersTarget(tiny_model), DiffusersTarget(copy)
    assert original.fingerprint == moved.fingerprint
    assert str(tiny_model) not in original.fingerprint
    weights = next((copy / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert DiffusersTarget(copy).fingerprint != original.fingerprint
    assert DiffusersTarget(copy, scheduler="euler").fingerprint != DiffusersTarget(copy).fingerprint
