"""The diffusers target and the local executor on a tiny seeded pipeline: seeds, batches, cache, kill/resume;
image-to-image that follows its init image and strength, the scheduler by name, LoRA weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from diffmia.cache import GenerationCache
from diffmia.config import FinetuneConfig
from diffmia.errors import ConfigError, TargetError
from diffmia.execution import generate
from diffmia.lab.finetune import finetune
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget
from drawn import ONE, SEVEN, rms

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
from diffmia.lab.finetune import finetune
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget
captions = {captions!r}
queries = [Query(captions[i % 2], seed=100 + i, steps=10, guidance=3.0) for i in range(int(sys.argv[3]))]
target = DiffusersTarget(sys.argv[1], batch_size=2, device="cpu", dtype="float64")
generate(target, queries, GenerationCache(sys.argv[2]), chunk_size=2, show_progress=False)
"""


@pytest.mark.slow
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


# --- image-to-image follows its init image and its strength -------------------------------------------------------


def test_img2img_output_follows_its_init_image_and_strength(builtin, tmp_path):
    ONE.save(tmp_path / "one.png")
    SEVEN.save(tmp_path / "seven.png")
    queries = [
        Query(
            "a handwritten digit", seed=5, steps=4, guidance=3.0, init_image=tmp_path / f"{name}.png", strength=strength
        )
        for strength in (0.25, 0.75)
        for name in ("one", "seven")
    ]
    low_one, low_seven, high_one, high_seven = builtin.generate(queries)
    assert rms(low_one, low_seven) > 20  # another init image, another output, all else equal
    assert rms(low_one, ONE) + 15 < rms(low_one, SEVEN)  # each stays nearer its own init than the other's
    assert rms(low_seven, SEVEN) + 15 < rms(low_seven, ONE)
    assert rms(low_one, ONE) + 8 < rms(high_one, ONE)  # a lower strength keeps more of the init image
    assert rms(low_seven, SEVEN) + 8 < rms(high_seven, SEVEN)
    in_memory = [replace(q, init_image=None) for q in queries]  # the same images given in memory (diffmia serve)
    again = builtin.generate(in_memory, init_images=[ONE, SEVEN, ONE, SEVEN])
    np.testing.assert_array_equal(_pixels(again), _pixels([low_one, low_seven, high_one, high_seven]))


def test_img2img_with_less_than_one_denoising_step_is_a_config_error(tiny_model, tmp_path):
    """steps x strength < 1 leaves diffusers no step to run (it crashes on an empty tensor): refused up front."""
    Image.new("RGB", (16, 16)).save(tmp_path / "init.png")
    target = DiffusersTarget(tiny_model, device="cpu")
    with pytest.raises(ConfigError, match=r"2 x 0\.2 is less than one: raise steps or strength"):
        target.generate([Query("x", 1, steps=2, init_image=tmp_path / "init.png", strength=0.2)])
    assert target.calls == 0 and target._pipes is None  # refused before loading anything


# --- the scheduler named is the one that runs ----------------------------------------------------------------------


def test_the_named_scheduler_is_installed_and_changes_the_images(tiny_model, tmp_path):
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "init.png")
    queries = [
        Query(CAPTIONS[1], seed=3, steps=2, guidance=3.0),
        Query(CAPTIONS[1], seed=3, steps=4, guidance=3.0, init_image=tmp_path / "init.png", strength=0.5),
    ]
    images, classes = {}, {}
    for name in (None, "ddpm", "dpm-solver++"):
        target = DiffusersTarget(tiny_model, scheduler=name, device="cpu", dtype="float64")
        images[name] = _pixels(target.generate(queries))
        classes[name] = type(target.pipeline().scheduler).__name__
    assert classes == {None: "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm-solver++": "DPMSolverMultistepScheduler"}
    for a, b in ((None, "ddpm"), (None, "dpm-solver++"), ("ddpm", "dpm-solver++")):
        for i, mode in enumerate(("text2img", "img2img")):  # both pipelines run the named scheduler
            changed = int(np.abs(images[a][i].astype(int) - images[b][i].astype(int)).max())
            assert changed > 0, f"{mode}: scheduler {a} and {b} give the same image"


# --- LoRA weights ----------------------------------------------------------------------------------------------


def _finetune_lora(model, root, seed=0):
    """A LoRA adapter as `diffmia finetune` makes one (2 steps at a high rate, so its weights are far from zero)."""
    (root / "data" / "img").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"data/img/{i}.png")
    lines = [json.dumps({"file_name": f"img/{i}.png", "caption": CAPTIONS[1]}) + "\n" for i in range(2)]
    (root / "data" / "metadata.jsonl").write_text("".join(lines))
    recipe = FinetuneConfig(method="lora", max_steps=2, batch_size=2, learning_rate=0.1, checkpoint_every=0, seed=seed)
    return finetune(model, root / "data", root / "out", recipe, show_progress=False) / "lora"


@pytest.fixture(scope="module")
def lora(tiny_model, tmp_path_factory):
    return _finetune_lora(tiny_model, tmp_path_factory.mktemp("lora"))


def test_lora_weights_change_the_images_and_scale_zero_is_the_base(tiny_model, lora):
    assert [p.name for p in lora.iterdir()] == ["pytorch_lora_weights.safetensors"]
    queries = _queries(2)
    base = _pixels(DiffusersTarget(tiny_model, device="cpu").generate(queries)).astype(float)
    scaled = {
        scale: _pixels(DiffusersTarget(tiny_model, lora=lora, lora_scale=scale, device="cpu").generate(queries))
        for scale in (1.0, 0.5, 0.0)
    }
    full, half = (np.sqrt(((scaled[s] - base) ** 2).mean()) for s in (1.0, 0.5))
    assert full > 3 and np.abs(scaled[1.0] - base).max() > 20  # the adapter shows in the images
    assert 0 < half < full  # half the strength, a smaller change
    np.testing.assert_array_equal(scaled[0.0], base)  # scale 0: the base model's images exactly


def test_lora_weights_are_merged_into_the_model_they_adapt(tiny_model, lora):
    """The adapters are fused and unloaded (queries run at the base model's speed): the denoiser has no LoRA layers
    left and predicts what the stock pipeline with the adapters loaded side by side predicts."""
    import torch
    from diffusers import StableDiffusionPipeline

    fused = DiffusersTarget(tiny_model, lora=lora, lora_scale=0.5, device="cpu").pipeline().unet
    assert not [name for name, _ in fused.named_modules() if "lora" in name]
    stock = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    stock.load_lora_weights(lora, adapter_name="a")
    stock.set_adapters(["a"], adapter_weights=[0.5])
    x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    text = torch.randn((2, 7, stock.unet.config.cross_attention_dim), generator=torch.Generator().manual_seed(1))
    base = DiffusersTarget(tiny_model, device="cpu").pipeline().unet
    with torch.no_grad():
        want, got, plain = (unet(x, 500, encoder_hidden_states=text).sample for unet in (stock.unet, fused, base))
    assert (want - plain).abs().max() > 1e-3  # the adapters change the prediction
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_fingerprint_follows_the_lora_weights(tiny_model, lora, tmp_path):
    from safetensors.torch import load_file, save_file

    base = DiffusersTarget(tiny_model).fingerprint
    with_lora = DiffusersTarget(tiny_model, lora=lora).fingerprint
    assert "lora=none" in base and with_lora != base and "scheduler=None" in with_lora
    moved = shutil.copytree(lora, tmp_path / "moved" / "lora")  # the same weights elsewhere: the same model
    assert DiffusersTarget(tiny_model, lora=moved).fingerprint == with_lora
    assert DiffusersTarget(tiny_model, lora=moved / "pytorch_lora_weights.safetensors").fingerprint == with_lora
    other = tmp_path / "other" / "lora"  # other weights (the same names and shapes): another model
    other.mkdir(parents=True)
    weights = load_file(lora / "pytorch_lora_weights.safetensors")
    save_file({k: 2 * v for k, v in weights.items()}, other / "pytorch_lora_weights.safetensors")
    assert DiffusersTarget(tiny_model, lora=other).fingerprint not in (base, with_lora)
    assert DiffusersTarget(tiny_model, lora=lora, lora_scale=0.5).fingerprint != with_lora
