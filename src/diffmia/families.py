"""Model families: how each kind of diffusers pipeline conditions its denoiser on a prompt.

Fine-tuning (:mod:`diffmia.lab.finetune`) and the gray-box baselines read a pipeline's weights, so they must call
its denoiser as its own pipeline does. A family is chosen from the pipeline's class, never by a user's flag:

- ``sd`` (Stable Diffusion 1.x / 2.x): a CLIP text encoder's last hidden states;
- ``sdxl`` (Stable Diffusion XL): two CLIP text encoders' penultimate hidden states side by side, plus the second
  one's pooled projection and the six size / crop "time ids" (original size, crop corner, target size);
- ``sd3`` (Stable Diffusion 3): two CLIP encoders' penultimate hidden states side by side, zero-padded to the T5
  encoder's width and followed by its 256 token states, plus both CLIP pooled projections.

``sd`` and ``sdxl`` train a UNet with the epsilon or v objective of a noise schedule (``diffusion``); ``sd3``
trains a transformer by flow matching (``flow``: x_s = (1 - s) x0 + s noise, the velocity noise - x0 regressed,
s = t / 1000). torch and diffusers are imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffmia.errors import ConfigError


@dataclass(frozen=True)
class Family:
    """What a fine-tune and a gray-box attack must know of one family of pipelines."""

    name: str
    pipelines: tuple[str, ...]  # the diffusers pipeline classes of the family (text-to-image and image-to-image)
    text_encoders: tuple[str, ...]  # the pipeline's text encoder attributes, frozen while the denoiser trains
    tokenizers: tuple[str, ...]  # the tokenizer attribute of each text encoder, in the same order
    denoiser: str = "unet"  # the pipeline's attribute holding the network that is fine-tuned
    objective: str = "diffusion"  # "diffusion" (epsilon or v on a noise schedule) or "flow" (flow matching)
    lengths: tuple[int | None, ...] = ()  # a token length the pipeline imposes per tokenizer (None: its own)

    def max_length(self, index: int, tokenizer: Any) -> int:
        """The token length the family's pipeline pads and cuts tokenizer ``index``'s prompts to."""
        fixed = self.lengths[index] if index < len(self.lengths) else None
        return int(fixed or tokenizer.model_max_length)


FAMILIES = (
    Family("sd", ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"), ("text_encoder",), ("tokenizer",)),
    Family(
        "sdxl",
        ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
        ("text_encoder", "text_encoder_2"),
        ("tokenizer", "tokenizer_2"),
    ),
    Family(
        "sd3",
        ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
        ("text_encoder", "text_encoder_2", "text_encoder_3"),
        ("tokenizer", "tokenizer_2", "tokenizer_3"),
        denoiser="transformer",
        objective="flow",
        lengths=(None, None, 256),  # the pipeline's max_sequence_length for T5
    ),
)


def family_of_class(name: str | None) -> Family:
    """The family of the pipeline class called ``name`` (a model_index.json's ``_class_name``)."""
    for family in FAMILIES:
        if name in family.pipelines:
            return family
    known = ", ".join(f"{f.name} ({f.pipelines[0]})" for f in FAMILIES)
    raise ConfigError(f"diffmia fine-tunes and reads the weights of these model families only: {known}; "
                      f"this model is a {name or 'pipeline of unknown class'}")  # fmt: skip


def family_of(pipe: Any) -> Family:
    """The family of a loaded pipeline, by its class (or the nearest base class diffmia knows)."""
    for cls in type(pipe).__mro__:
        if any(cls.__name__ in family.pipelines for family in FAMILIES):
            return family_of_class(cls.__name__)
    return family_of_class(type(pipe).__name__)


@dataclass(frozen=True)
class Conditioning:
    """What a batch of prompts conditions the denoiser on, one row per prompt.

    ``embeds`` are the token embeddings it attends to; ``added`` holds SDXL's ``added_cond_kwargs`` (the pooled
    text embedding and the time ids); ``pooled`` is SD3's pooled projection, whose presence means a transformer
    denoiser. Indexing selects rows of every part.
    """

    embeds: Any
    added: dict[str, Any] | None = None
    pooled: Any = None

    def __len__(self) -> int:
        return len(self.embeds)

    def __getitem__(self, index: Any) -> Conditioning:
        added = None if self.added is None else {k: v[index] for k, v in self.added.items()}
        return Conditioning(self.embeds[index], added, None if self.pooled is None else self.pooled[index])

    def predict(self, denoiser: Any, x: Any, timesteps: Any) -> Any:
        """The denoiser's output (noise, v or flow velocity) for latents ``x`` at ``timesteps``."""
        if self.pooled is not None:  # SD3's transformer
            return denoiser(hidden_states=x, timestep=timesteps, encoder_hidden_states=self.embeds,
                            pooled_projections=self.pooled).sample  # fmt: skip
        if self.added is None:
            return denoiser(x, timesteps, encoder_hidden_states=self.embeds).sample
        return denoiser(x, timesteps, encoder_hidden_states=self.embeds, added_cond_kwargs=self.added).sample


def tokenize(pipe: Any, prompts: Sequence[str]) -> list[Any]:
    """The token ids of ``prompts`` for each text encoder of the pipeline's family, padded and cut to its length."""
    family, ids = family_of(pipe), []
    for index, name in enumerate(family.tokenizers):
        tokenizer = getattr(pipe, name)
        ids.append(tokenizer(list(prompts), padding="max_length", max_length=family.max_length(index, tokenizer),
                             truncation=True, return_tensors="pt").input_ids)  # fmt: skip
    return ids


def encode(family: Family, encoders: Sequence[Any], ids: Sequence[Any], resolution: int) -> Conditioning:
    """The conditioning of token ``ids`` (one tensor per encoder) for images of ``resolution`` px, as the family's
    pipeline computes it; gradients flow into the encoders (pretraining trains them).

    SD: the encoder's last hidden states. SDXL: both encoders' penultimate hidden states side by side, the second
    encoder's pooled projection, and the size ids (original height and width, crop corner 0, 0, target size) of
    an uncropped image of that size. SD3: the two CLIP encoders' penultimate states side by side, zero-padded to
    the T5 width, then the T5 states; both CLIP pooled projections side by side.
    """
    import torch

    if family.name == "sd":
        return Conditioning(encoders[0](ids[0])[0])
    outputs = [encoder(i, output_hidden_states=True) for encoder, i in zip(encoders[:2], ids[:2], strict=True)]
    embeds = torch.cat([output.hidden_states[-2] for output in outputs], dim=-1)
    if family.name == "sd3":
        t5 = encoders[2](ids[2])[0]
        clip = torch.nn.functional.pad(embeds, (0, t5.shape[-1] - embeds.shape[-1]))
        pooled = torch.cat([output[0] for output in outputs], dim=-1)
        return Conditioning(torch.cat([clip, t5], dim=-2), pooled=pooled)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * len(embeds))
    added = {"text_embeds": outputs[-1].text_embeds, "time_ids": time_ids.to(embeds.device, embeds.dtype)}
    return Conditioning(embeds, added)


def condition(pipe: Any, prompts: Sequence[str], resolution: int, device: Any) -> Conditioning:
    """The conditioning of ``prompts`` for images of ``resolution`` x ``resolution``, as the pipeline computes it
    when it generates at that size (no guidance, one image per prompt). No gradient flows into the encoders."""
    import torch

    family = family_of(pipe)
    encoders = [getattr(pipe, name) for name in family.text_encoders]
    with torch.no_grad():
        return encode(family, encoders, [i.to(device) for i in tokenize(pipe, prompts)], resolution)


def training_scheduler(pipe: Any) -> Any:
    """The scheduler training draws noise levels from: DDPM's for a diffusion family, flow matching's for a flow
    one, with the pipeline's own schedule settings (betas, prediction type; shift)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    kind = FlowMatchEulerDiscreteScheduler if family_of(pipe).objective == "flow" else DDPMScheduler
    return kind.from_config(pipe.scheduler.config)


def latent_shift(vae: Any) -> float:
    """The VAE's latent shift (SD3 and Flux subtract it before scaling; 0 where the config has none)."""
    return float(getattr(vae.config, "shift_factor", None) or 0.0)
