"""Fixtures shared across the test suite."""

from __future__ import annotations

import pytest

from diffmia.lab.pipeline import TinySDConfig, build_pipeline

TINY = TinySDConfig(resolution=16, vae_channels=(16, 32), unet_channels=(16, 32), unet_layers_per_block=1,
                    text_width=32, text_layers=1, text_heads=2, max_length=16)  # fmt: skip
CAPTIONS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised tiny Stable Diffusion pipeline folder: enough to test plumbing, seeded."""
    folder = tmp_path_factory.mktemp("tiny") / "pipeline"
    build_pipeline(CAPTIONS, TINY, seed=0).save_pretrained(folder)
    return folder
