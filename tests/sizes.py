"""The tiny model size the plumbing tests build (16 px, two levels, one text layer): seconds to train on a CPU."""

from diffmia.lab.pipeline import TinySDConfig

TINY = TinySDConfig(
    resolution=16,
    vae_channels=(16, 32),
    unet_channels=(16, 32),
    unet_layers_per_block=1,
    text_width=32,
    text_layers=1,
    text_heads=2,
    max_length=16,
)
