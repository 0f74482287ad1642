"""Encoders: tiny random transformers models built from configs and loaded offline; image conversion."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffmia.assets import CAPTIONER_DIR
from diffmia.encoders import HFVisionEncoder, PixelEncoder
from diffmia.errors import TargetError


def _images(n, size=24, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _save_vit(folder, kind, seed=0):
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        DeiTConfig,
        DeiTModel,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
    )

    small = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    torch.manual_seed(seed)
    model = {
        "vit": lambda: ViTModel(ViTConfig(**small)),
        "deit": lambda: DeiTModel(DeiTConfig(**small)),
        "clip": lambda: CLIPVisionModel(CLIPVisionConfig(**small)),
    }[kind]()
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("kind", "tokens"), [("vit", 17), ("deit", 18), ("clip", 17)])
def test_hf_encoder_loads_offline_and_returns_tokens(tmp_path, kind, tokens):
    folder = _save_vit(tmp_path / kind, kind)
    encoder = HFVisionEncoder(folder)
    images = _images(3)
    out = encoder.encode(images)
    assert out.shape == (3, tokens, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, HFVisionEncoder(folder, batch_size=2).encode(images), rtol=1e-5, atol=1e-6)
    assert encoder.pool(out).shape == (3, 16)
    np.testing.assert_allclose(HFVisionEncoder(folder, pooling="mean").pool(out), out.mean(axis=1))
    assert encoder.fingerprint == HFVisionEncoder(folder).fingerprint


def _weights_identity(encoder):
    """The fingerprint without the folder's path: what it says about the weights (and the pooling)."""
    fingerprint = encoder.fingerprint
    assert fingerprint.count(encoder.model) == 1
    return fingerprint.replace(encoder.model, "<folder>")


@pytest.mark.parametrize("kind", ["vit", "deit", "clip"])
def test_hf_encoder_fingerprint_follows_the_weights(tmp_path, kind):
    """Cached embeddings are keyed by the fingerprint: other weights in the same architecture must change it.

    The fingerprint is f"hf({folder}@{content digest},pooling=...)": the folder is part of it, and the digest
    hashes the weight and config files' contents, so the same weights copied elsewhere digest alike.
    """
    import shutil

    first = _save_vit(tmp_path / "first", kind, seed=0)
    retrained = _save_vit(tmp_path / "retrained", kind, seed=1)  # same config, other weights
    copy = shutil.copytree(first, tmp_path / "copy")
    config = (first / "config.json").read_text()
    assert (retrained / "config.json").read_text() == config  # only the weights differ
    images = _images(2)
    assert not np.allclose(HFVisionEncoder(first).encode(images), HFVisionEncoder(retrained).encode(images))

    base = HFVisionEncoder(first)
    assert base.fingerprint.startswith(f"hf({first}@") and base.fingerprint.endswith(",pooling=cls)")
    assert _weights_identity(HFVisionEncoder(retrained)) != _weights_identity(base)
    assert _weights_identity(HFVisionEncoder(copy)) == _weights_identity(base)
    assert HFVisionEncoder(copy).fingerprint != base.fingerprint  # the folder is part of the key, by design
    assert HFVisionEncoder(first, pooling="mean").fingerprint != base.fingerprint

    # new weights written over the old ones in the same folder: a new encoder must not reuse the old digest
    before = base.fingerprint
    weights = next(first.glob("*.safetensors"))
    stat = weights.stat()
    shutil.copyfile(next(retrained.glob("*.safetensors")), weights)
    # the digest is remembered per (name, size, mtime) and the size is unchanged: date the rewrite a second later
    # so that a coarse file clock cannot give it the old mtime (a rewrite within one clock tick would go unseen)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert weights.stat().st_size == stat.st_size
    assert HFVisionEncoder(first).fingerprint != before
    assert _weights_identity(HFVisionEncoder(first)) == _weights_identity(HFVisionEncoder(retrained))


def test_missing_weights_say_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetError, match=r"encoder weights .* are not available.*point the encoder at that folder"):
        HFVisionEncoder(tmp_path / "empty").encode(_images(1))


def test_pixel_encoder():
    image = Image.fromarray(np.full((4, 4, 3), 255, np.uint8))
    out = PixelEncoder(size=2).encode([image])
    np.testing.assert_allclose(out, np.ones((1, 12)))


def test_the_built_in_captioners_vision_tower_is_an_offline_vit_encoder():
    """The encoders study compares pixels with this ViT: HFVisionEncoder must keep BLIP's trained image tower."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    folder = CAPTIONER_DIR / "captioner"
    images = _images(3, size=32)
    tokens = HFVisionEncoder(folder).encode(images)
    assert tokens.shape == (3, 1 + (32 // 8) ** 2, 96)  # class token + 16 patches of 8x8, width 96
    blip = BlipForConditionalGeneration.from_pretrained(folder).eval()
    inputs = BlipProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = blip.vision_model(pixel_values=inputs.pixel_values).last_hidden_state.numpy()
    np.testing.assert_allclose(tokens, expected, rtol=1e-5, atol=1e-5)
