"""Captioners: where a query's prompt comes from when the attacker queries the target.

``GivenCaptions`` uses the data set's own captions (scenarios I and III); ``BlipCaptioner`` captions the images
with a (fine-tuned) image-to-text model (scenarios II and IV). Both answer ``caption(samples)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from diffmia.assets import resolve_captioner
from diffmia.errors import DataError, TargetError
from diffmia.files import weights_digest
from diffmia.images import load_rgb
from diffmia.records import Sample

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"


class GivenCaptions:
    """The samples' own captions; every sample must have one."""

    fingerprint = "given-captions"

    def caption(self, samples: Sequence[Sample]) -> list[str]:
        missing = [s.id for s in samples if not (s.caption and s.caption.strip())]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(
                f"{len(missing)} samples have no caption ({shown}); this scenario queries with the given captions, "
                "so add them to the metadata or use a scenario that captions the images"
            )
        return [s.caption or "" for s in samples]


class BlipCaptioner:
    """A transformers image-to-text captioner (BLIP; BLIP-2 loads through the same path), greedy and batched.

    Parameters
    ----------
    model : hub id or folder, default ``Salesforce/blip-image-captioning-base`` (the reference captioner), a
        folder written by ``diffmia finetune-captioner``, or ``builtin`` (the shipped tiny BLIP of the digits).
    max_length : longest caption in tokens (77: what a Stable Diffusion text encoder reads)
    num_beams : beam search width; 1 is greedy. Decoding is deterministic either way.
    captions_per_image : how many captions :meth:`caption_all` writes per image: the best of a beam search at
        least that wide (1: the single caption of ``num_beams``).
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_CAPTIONER,
        *,
        batch_size: int = 16,
        max_length: int = 77,
        num_beams: int = 1,
        captions_per_image: int = 1,
        device: str = "cpu",
    ) -> None:
        self.model, self.batch_size, self.max_length = resolve_captioner(model), batch_size, max_length
        self.num_beams, self.captions_per_image, self.device = num_beams, captions_per_image, device
        self._loaded: tuple[Any, Any] | None = None
        self._fingerprint: str | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._loaded = load_captioner(self.model, self.device)
        return self._loaded

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            local = Path(self.model).is_dir()
            identity = (
                weights_digest(Path(self.model))
                if local
                else str(getattr(self._load()[1].config, "_commit_hash", None) or "unpinned")
            )
            k = f",captions={self.captions_per_image}" if self.captions_per_image > 1 else ""
            self._fingerprint = f"blip({self.model}@{identity},beams={self.num_beams},max={self.max_length}{k})"
        return self._fingerprint

    def caption(self, samples: Sequence[Sample]) -> list[str]:
        """One caption per sample (the best, when several are written)."""
        return [captions[0] for captions in self.caption_all(samples)]

    def caption_all(self, samples: Sequence[Sample]) -> list[list[str]]:
        """``captions_per_image`` captions per sample, best first."""
        return self.caption_images_all([load_rgb(s.image_path) for s in samples])

    def caption_images(self, images: Sequence[Image.Image]) -> list[str]:
        return [captions[0] for captions in self.caption_images_all(images)]

    def caption_images_all(self, images: Sequence[Image.Image]) -> list[list[str]]:
        import torch

        processor, network = self._load()
        k = self.captions_per_image
        beams = self.num_beams if k == 1 else max(self.num_beams, k)
        captions: list[list[str]] = []
        for start in range(0, len(images), self.batch_size):
            inputs = processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            with torch.no_grad():
                ids = network.generate(
                    pixel_values=inputs["pixel_values"].to(self.device),
                    max_length=self.max_length,
                    num_beams=beams,
                    num_return_sequences=k,
                    do_sample=False,
                )
            decoded = [c.strip() for c in processor.batch_decode(ids, skip_special_tokens=True)]
            captions += [decoded[i : i + k] for i in range(0, len(decoded), k)]
        return captions


def load_captioner(model: str, device: str = "cpu") -> tuple[Any, Any]:
    """Processor and model of an image-to-text captioner (BLIP, BLIP-2, ...) from a hub id or a folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(model).is_dir()
    try:
        processor = AutoProcessor.from_pretrained(model, local_files_only=local)
        network = AutoModelForImageTextToText.from_pretrained(model, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise TargetError(
            f"captioner weights {model!r} are not available{'' if local else ' offline'} ({type(exc).__name__}); "
            "download them once (e.g. `hf download MODEL --local-dir DIR`) and point the captioner at that folder"
        ) from None
    return processor, network.to(device).eval()
