"""Model families: how each kind of diffusers pipeline conditions its denoiser on a prompt.

Fine-tuning (:mod:`diffmia.lab.finetune`) and the gray-box baselines read a pipeline's weights, so they must call
its denoiser as its own pipeline does. A family is chosen from the pipeline's class, never by a user's flag:

- ``sd`` (Stable Diffusion 1.x / 2.x): a CLIP text encoder's last hidden states;
- ``sdxl`` (Stable Diffusion XL): two CLIP text encoders' penultimate hidden states side by side, plus the second
  one's pooled projection and the six size / crop "time ids" (original size, crop corner, target size);
- ``sd3`` (Stable Diffusion 3): two CLIP encoders' penultimate hidden states side by side, zero-padded to the T5
  encoder's width and followed by its 256 token states, plus both CLIP pooled projections;
- ``flux`` (FLUX.1): the T5 encoder's 512 token states and the CLIP encoder's pooled output; the latents enter the
  transformer as a sequence of 2 x 2 patches with their (row, column) position ids, the timestep as t / 1000, and a
  guidance-distilled model (``guidance_embeds``) also gets the guidance scale.

``sd`` and ``sdxl`` train a UNet with the epsilon or v objective of a noise schedule (``diffusion``); ``sd3`` and
``flux`` train a transformer by flow matching (``flow``: x_s = (1 - s) x0 + s noise, the velocity noise - x0
regressed, s = t / 1000). torch and diffusers are imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    Family(
        "flux",
        ("FluxPipeline", "FluxImg2ImgPipeline"),
        ("text_encoder", "text_encoder_2"),
        ("tokenizer", "tokenizer_2"),
        denoiser="transformer",
        objective="flow",
        lengths=(None, 512),  # the pipeline's max_sequence_length for T5
    ),
)

FLUX_GUIDANCE = 3.5  # the guidance a guidance-distilled Flux model is conditioned on: FluxPipeline's default


def family_of_class(name: str | None) -> Family:
    """The family of the pipeline class called ``name`` (a model_index.json's ``_class_name``)."""
    for family in FAMILIES:
        if name in family.pipelines:
            return family
    known = ", ".join(f"{f.name} ({f.pipelines[0]})" for f in FAMILIES)
    raise ConfigError(
        f"diffmia fine-tunes and reads the weights of these model families only: {known}; "
        f"this model is a {name or 'pipeline of unknown class'}"
    )


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
    text embedding and the time ids); ``pooled`` is the pooled projection of SD3 and Flux; ``guidance`` the
    guidance scale a guidance-distilled Flux model is given; ``family`` names the family, whose denoiser
    :meth:`predict` calls as its pipeline does. Indexing selects rows of every part.
    """

    embeds: Any
    added: dict[str, Any] | None = None
    pooled: Any = None
    family: str = "sd"
    guidance: Any = None

    def __len__(self) -> int:
        return len(self.embeds)

    def __getitem__(self, index: Any) -> Conditioning:
        added = None if self.added is None else {k: v[index] for k, v in self.added.items()}
        pooled = None if self.pooled is None else self.pooled[index]
        guidance = None if self.guidance is None else self.guidance[index]
        return Conditioning(self.embeds[index], added, pooled, self.family, guidance)

    def predict(self, denoiser: Any, x: Any, timesteps: Any) -> Any:
        """The denoiser's output (noise, v or flow velocity) for latents ``x`` at ``timesteps``."""
        if self.family == "flux":
            return _flux_predict(denoiser, x, timesteps, self)
        if self.family == "sd3":
            return denoiser(
                hidden_states=x, timestep=timesteps, encoder_hidden_states=self.embeds, pooled_projections=self.pooled
            ).sample
        if self.added is None:
            return denoiser(x, timesteps, encoder_hidden_states=self.embeds).sample
        return denoiser(x, timesteps, encoder_hidden_states=self.embeds, added_cond_kwargs=self.added).sample


def _flux_predict(transformer: Any, x: Any, timesteps: Any, context: Conditioning) -> Any:
    """Flux's transformer on latents ``x`` (batch, channels, height, width): as FluxPipeline calls it, on the
    sequence of 2 x 2 latent patches (row-major, each patch's channels outermost) with position ids (0, row,
    column), text position ids of zeros and the timestep divided by 1000; its output unpacked to ``x``'s shape."""
    import torch

    b, c, h, w = x.shape
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(x.device, x.dtype)
    text_ids = torch.zeros(context.embeds.shape[1], 3, device=x.device, dtype=context.embeds.dtype)
    steps = torch.as_tensor(timesteps, device=x.device).to(x.dtype).expand(b)
    out = transformer(
        hidden_states=packed,
        timestep=steps / 1000,
        guidance=context.guidance,
        encoder_hidden_states=context.embeds,
        pooled_projections=context.pooled,
        txt_ids=text_ids,
        img_ids=image_ids,
    ).sample
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def tokenize(pipe: Any, prompts: Sequence[str]) -> list[Any]:
    """The token ids of ``prompts`` for each text encoder of the pipeline's family, padded and cut to its length."""
    family, ids = family_of(pipe), []
    for index, name in enumerate(family.tokenizers):
        tokenizer = getattr(pipe, name)
        ids.append(
            tokenizer(
                list(prompts),
                padding="max_length",
                max_length=family.max_length(index, tokenizer),
                truncation=True,
                return_tensors="pt",
            ).input_ids
        )
    return ids


def encode(family: Family, encoders: Sequence[Any], ids: Sequence[Any], resolution: int) -> Conditioning:
    """The conditioning of token ``ids`` (one tensor per encoder) for images of ``resolution`` px, as the family's
    pipeline computes it; gradients flow into the encoders (pretraining trains them).

    SD: the encoder's last hidden states. SDXL: both encoders' penultimate hidden states side by side, the second
    encoder's pooled projection, and the size ids (original height and width, crop corner 0, 0, target size) of
    an uncropped image of that size. SD3: the two CLIP encoders' penultimate states side by side, zero-padded to
    the T5 width, then the T5 states; both CLIP pooled projections side by side. Flux: the T5 states and the CLIP
    encoder's pooled output.
    """
    import torch

    if family.name == "sd":
        return Conditioning(encoders[0](ids[0])[0])
    if family.name == "flux":
        pooled = encoders[0](ids[0], output_hidden_states=False).pooler_output
        return Conditioning(encoders[1](ids[1], output_hidden_states=False)[0], pooled=pooled, family="flux")
    outputs = [encoder(i, output_hidden_states=True) for encoder, i in zip(encoders[:2], ids[:2], strict=True)]
    embeds = torch.cat([output.hidden_states[-2] for output in outputs], dim=-1)
    if family.name == "sd3":
        t5 = encoders[2](ids[2])[0]
        clip = torch.nn.functional.pad(embeds, (0, t5.shape[-1] - embeds.shape[-1]))
        pooled = torch.cat([output[0] for output in outputs], dim=-1)
        return Conditioning(torch.cat([clip, t5], dim=-2), pooled=pooled, family="sd3")
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * len(embeds))
    added = {"text_embeds": outputs[-1].text_embeds, "time_ids": time_ids.to(embeds.device, embeds.dtype)}
    return Conditioning(embeds, added, family="sdxl")


def condition(pipe: Any, prompts: Sequence[str], resolution: int, device: Any) -> Conditioning:
    """The conditioning of ``prompts`` for images of ``resolution`` x ``resolution``, as the pipeline computes it
    when it generates at that size (no guidance, one image per prompt). No gradient flows into the encoders."""
    import torch

    family = family_of(pipe)
    encoders = [getattr(pipe, name) for name in family.text_encoders]
    with torch.no_grad():
        context = encode(family, encoders, [i.to(device) for i in tokenize(pipe, prompts)], resolution)
    if family.name == "flux" and pipe.transformer.config.guidance_embeds:  # FLUX.1-dev: guidance-distilled
        return replace(context, guidance=torch.full((len(context),), FLUX_GUIDANCE, device=device))
    return context


def training_scheduler(pipe: Any) -> Any:
    """The scheduler training draws noise levels from: DDPM's for a diffusion family, flow matching's for a flow
    one, with the pipeline's own schedule settings (betas, prediction type; shift)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    kind = FlowMatchEulerDiscreteScheduler if family_of(pipe).objective == "flow" else DDPMScheduler
    return kind.from_config(pipe.scheduler.config)


def native_size(pipe: Any) -> int:
    """The image size a pipeline was trained at: its denoiser's latent size times the VAE's scale factor, or, for
    Flux, whose transformer has no size (its pipelines default to 1024 px whatever the model), its VAE's."""
    latent = getattr(getattr(pipe, family_of(pipe).denoiser).config, "sample_size", None)
    return int(latent * pipe.vae_scale_factor) if latent is not None else int(pipe.vae.config.sample_size)


def latent_shift(vae: Any) -> float:
    """The VAE's latent shift (SD3 and Flux subtract it before scaling; 0 where the config has none)."""
    return float(getattr(vae.config, "shift_factor", None) or 0.0)
