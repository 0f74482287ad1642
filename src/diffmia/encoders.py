"""Image encoders: what turns a query image and its generations into comparable embeddings.

``HFVisionEncoder`` wraps any transformers vision model with its own image processor (DeiT, BEiT, ViT, CLIP
vision, DINOv2, ...) and returns its token outputs (n, tokens, d); ``pool`` makes one vector per image.
``PixelEncoder`` is the model-free reference: resized RGB pixels. Every encoder has a ``fingerprint`` (class,
parameters and weights identity) that keys cached embeddings.

:data:`ENCODERS` is the registry of encoders known by name (``pixels``); any other name in ``features.encoders``
is a transformers vision model, by hub id or folder (:func:`make_encoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from diffmia.errors import ConfigError, TargetError
from diffmia.files import weights_digest
from diffmia.registry import Registry

DEFAULT_ENCODER = "facebook/deit-base-distilled-patch16-384"
POOLINGS = ("cls", "mean", "pooler")


class PixelEncoder:
    """Resized RGB pixels in [0, 1], flattened: (n, size * size * 3)."""

    def __init__(self, size: int = 32) -> None:
        if size < 1:
            raise ConfigError(f"pixel encoder size must be positive, got {size}")
        self.size = size
        self.fingerprint = f"pixels(size={size})"

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = [
            np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC), np.float32) / 255.0
            for im in images
        ]
        return np.stack(rows).reshape(len(rows), -1) if rows else np.zeros((0, self.size * self.size * 3), np.float32)


class HFVisionEncoder:
    """A transformers vision model and its image processor, loaded lazily from a hub id or a local folder.

    Parameters
    ----------
    model : hub id or folder, default DeiT base distilled 384 (the reference attack's encoder)
    pooling : "cls" (first token), "mean" (mean of tokens) or "pooler" (the model's pooler output)
    batch_size : images per forward pass
    device : "cpu", "cuda", ...
    """

    def __init__(
        self, model: str | Path = DEFAULT_ENCODER, *, pooling: str = "cls", batch_size: int = 32, device: str = "cpu"
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.model, self.pooling, self.batch_size, self.device = str(model), pooling, batch_size, device
        self._loaded: tuple[Any, Any] | None = None
        self._fingerprint: str | None = None

    @property
    def local(self) -> bool:
        return Path(self.model).is_dir()

    def load(self) -> None:
        """Load the weights now (a TargetError now, not at the first image, when they are not available)."""
        self._load()

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoImageProcessor, AutoModel

            try:
                processor = AutoImageProcessor.from_pretrained(self.model, local_files_only=self.local)
                network = AutoModel.from_pretrained(self.model, local_files_only=self.local)
            except (OSError, ValueError) as exc:
                raise TargetError(
                    f"encoder weights {self.model!r} are not available"
                    f"{'' if self.local else ' offline'} ({type(exc).__name__}); download them once "
                    "(e.g. `hf download MODEL --local-dir DIR`) and point the encoder at that folder"
                ) from None
            network = getattr(network, "vision_model", network)  # CLIP-style models: keep the image tower
            self._loaded = (processor, network.to(self.device).eval())
        return self._loaded

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.local:
                identity = weights_digest(Path(self.model))
            else:
                identity = str(getattr(self._load()[1].config, "_commit_hash", None) or "unpinned")
            self._fingerprint = f"hf({self.model}@{identity},pooling={self.pooling})"
        return self._fingerprint

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Token outputs (n, tokens, d), float32."""
        import torch

        processor, network = self._load()
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            inputs = processor(images=batch, return_tensors="pt").to(self.device)
            with torch.no_grad():
                output = network(**inputs)
            tokens = output.last_hidden_state
            if self.pooling == "pooler":
                pooled = getattr(output, "pooler_output", None)
                if pooled is None:
                    raise ConfigError(f"{self.model} has no pooler output; use pooling 'cls' or 'mean'")
                tokens = torch.cat([pooled[:, None, :], tokens], dim=1)  # the pooled vector leads the tokens
            chunks.append(tokens.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0, 0), np.float32)

    def pool(self, tokens: np.ndarray) -> np.ndarray:
        """One vector per image from ``encode``'s output: the first token (cls, pooler) or the mean."""
        return np.asarray(tokens.mean(axis=1) if self.pooling == "mean" else tokens[:, 0])


class Encoder(Protocol):
    @property
    def fingerprint(self) -> str: ...

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class NamedEncoder:
    """An encoder known by name: how to build it (from ``features.pixel_size``), and whether it gives token
    outputs (so that per-token and per-unit columns exist)."""

    build: Callable[[int], Encoder]
    tokens: bool


ENCODERS: Registry[NamedEncoder] = Registry("encoder", {"pixels": NamedEncoder(PixelEncoder, tokens=False)})


def make_encoder(name: str, pixel_size: int) -> Encoder:
    """The encoder ``features.encoders`` names: a registered one, else a transformers model by hub id or folder."""
    return ENCODERS[name].build(pixel_size) if name in ENCODERS else HFVisionEncoder(name)


def gives_tokens(name: str) -> bool:
    """Whether the encoder ``name`` gives token outputs (transformers models do)."""
    return ENCODERS[name].tokens if name in ENCODERS else True


def encoder_name(name: str) -> str:
    """The short name an encoder's feature columns carry: a registered name, or a hub id's or folder's last part."""
    return name if name in ENCODERS else Path(name.rstrip("/")).name
