"""Encoders: tiny random transformers models built from configs and loaded offline; image conversion."""

from __future__ import annotations

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


def _save_vit(folder, kind):
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        DeiTConfig,
        DeiTModel,
        ViTConfig,
        ViTImageProcessorPil,  # fmt: skip
        ViTModel,
    )

    small = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 32}  # fmt: skip
    torch.manual_seed(0)
    model = {"vit": lambda: ViTModel(ViTConfig(**small)), "deit": lambda: DeiTModel(DeiTConfig(**small)),
             "clip": lambda: CLIPVisionModel(CLIPVisionConfig(**small))}[kind]()  # fmt: skip
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
    assert encoder.fingerprint != HFVisionEncoder(_save_vit(tmp_path / "other", "vit")).fingerprint or kind != "vit"


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
