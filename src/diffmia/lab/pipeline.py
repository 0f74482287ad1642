"""The built-in tiny Stable Diffusion: real diffusers/transformers classes at a size that trains on 2 CPU cores.

32x32 RGB images, an AutoencoderKL to 8x8x4 latents, a text-conditioned UNet2DConditionModel, a CLIP text
encoder and a CLIPTokenizer whose BPE vocabulary is learned from the captions (every caption word is one
token). Saved with ``save_pretrained``, the folder loads unchanged in stock ``StableDiffusionPipeline`` and
``StableDiffusionImg2ImgPipeline``.

``family="sdxl"`` builds the same sizes as a ``StableDiffusionXLPipeline``, as SDXL is built: two CLIP text
encoders (the second with a pooled projection) whose hidden states the UNet attends to side by side, a UNet whose
first level has no attention, linear attention projections, the pooled text and six size ids added to the
timestep embedding, and SDXL's Euler scheduler.

``family="sd3"`` builds a ``StableDiffusion3Pipeline``: two CLIP encoders with projections and a T5 encoder (twice
as wide as both CLIP encoders' states side by side, as in SD3; its Unigram tokenizer is learned from the captions,
as T5's SentencePiece one was), a joint-attention ``SD3Transformer2DModel`` over 2 x 2 latent patches, a VAE
without quant convolutions, and the flow-matching Euler scheduler with SD3's shift of 3.

``family="flux"`` builds a ``FluxPipeline``: a CLIP encoder (its pooled output) and the same T5, a
``FluxTransformer2DModel`` (one double-stream and two single-stream blocks, rotary position embeddings) over the
2 x 2 patches of the latents, the VAE without quant convolutions, and FLUX.1-dev's flow-matching scheduler (its
shift set by the image size at sampling time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from diffmia.errors import ConfigError
from diffmia.families import FAMILIES as KNOWN_FAMILIES

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTokenizer

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TIME_EMBED_DIM = 8  # SDXL: the width of each of the six size ids' sinusoidal embedding (256 in SDXL itself)
FAMILIES = {family.name: family for family in KNOWN_FAMILIES}  # every family the lab builds a tiny model of
SD3_LAYERS, SD3_PATCH = 2, 2  # the tiny SD3 transformer's joint blocks and its patch size
FLUX_LAYERS = (1, 2)  # the tiny Flux transformer's double-stream and single-stream blocks
FLOW_VAE = {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.0}  # SD3's and Flux's VAE
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789,.'-!?"


@dataclass(frozen=True)
class TinySDConfig:
    """Sizes of the tiny model; the defaults are the shipped base model's."""

    resolution: int = 32
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (32, 64)
    vae_layers_per_block: int = 1
    unet_layers_per_block: int = 2
    attention_head_dim: int = 8
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = 32
    train_timesteps: int = 1000

    def __post_init__(self) -> None:
        problems = []
        for name in ("vae_channels", "unet_channels"):
            channels = getattr(self, name)
            if not channels or channels[0] < 1:
                problems.append(f"{name} {list(channels)} must be a list of positive channel counts")
            elif any(c % min(32, channels[0]) for c in channels):
                problems.append(
                    f"{name} {list(channels)} must be multiples of {min(32, channels[0])} (the group-norm groups)"
                )
        if any(c % self.attention_head_dim for c in self.unet_channels):
            problems.append(
                f"unet_channels {list(self.unet_channels)} must be multiples of the attention head "
                f"size {self.attention_head_dim}"
            )
        if self.text_width % self.text_heads:
            problems.append(f"text_width {self.text_width} must be a multiple of text_heads {self.text_heads}")
        latent = self.resolution // 2 ** (len(self.vae_channels) - 1)
        if self.resolution % 2 ** (len(self.vae_channels) - 1) or latent % 2 ** (len(self.unet_channels) - 1):
            problems.append(
                f"{len(self.vae_channels)} VAE levels and {len(self.unet_channels)} UNet levels do not "
                f"divide the {self.resolution}px resolution evenly"
            )
        if min(self.vae_layers_per_block, self.unet_layers_per_block, self.text_layers) < 1:
            problems.append("layer counts must be at least 1")
        if problems:
            raise ConfigError("tiny model: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_tokenizer(captions: Iterable[str], max_length: int) -> CLIPTokenizer:
    """A CLIPTokenizer whose BPE merges are learned from ``captions`` until every caption word is one token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # a bound, never reached: merging stops when every word is whole
        special_tokens=list(SPECIAL_TOKENS),
        end_of_word_suffix="</w>",
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    bpe.train_from_iterator(captions, trainer)
    model = json.loads(bpe.to_str())["model"]
    # transformers 5 ignores vocab_file=/merges_file=; the vocabulary and merges go in directly
    return CLIPTokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],
        model_max_length=max_length,
        pad_token=SPECIAL_TOKENS[1],
    )


def build_t5_tokenizer(captions: Iterable[str], max_length: int = 512) -> Any:
    """A T5 tokenizer (Unigram, SentencePiece-style word starts) whose vocabulary is learned from ``captions``; its
    512-token limit is T5's (SD3's pipeline pads and cuts to 256 by itself)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.Lowercase()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=8000,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    unigram.train_from_iterator(captions, trainer)
    vocab = [(piece, score) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def build_pipeline(
    captions: Iterable[str], config: TinySDConfig | None = None, seed: int = 0, family: str = "sd"
) -> DiffusionPipeline:
    """A randomly initialised tiny pipeline of ``family`` (seeded), with a tokenizer learned from ``captions``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r} (valid: {', '.join(FAMILIES)})")
    config = config or TinySDConfig()
    tokenizer = build_tokenizer(captions, config.max_length)
    torch.manual_seed(seed)
    n_vae = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=config.vae_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=min(32, config.vae_channels[0]),
        sample_size=config.resolution,
        # SD3's and Flux's VAEs have no quant convolutions and shift their latents (pretraining sets shift and scale)
        **(FLOW_VAE if FAMILIES[family].objective == "flow" else {}),
    )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_width,
        intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=config.text_width,
    )
    if family == "sdxl":
        return _build_sdxl(config, vae, tokenizer, text_config)
    if family == "sd3":
        return _build_sd3(config, vae, tokenizer, text_config, captions)
    if family == "flux":
        return _build_flux(config, vae, tokenizer, text_config, captions)
    n_unet = len(config.unet_channels)
    unet = UNet2DConditionModel(
        down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
        cross_attention_dim=config.text_width,
        **_unet_sizes(config),
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **_sd_schedule(config))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _unet_sizes(config: TinySDConfig) -> dict[str, Any]:
    """The UNet sizes every UNet family shares: latent size and channels, widths, layers, heads, norm groups."""
    return {
        "sample_size": config.resolution // 2 ** (len(config.vae_channels) - 1),
        "in_channels": config.latent_channels,
        "out_channels": config.latent_channels,
        "block_out_channels": config.unet_channels,
        "layers_per_block": config.unet_layers_per_block,
        "attention_head_dim": config.attention_head_dim,
        "norm_num_groups": min(32, config.unet_channels[0]),
    }


def _sd_schedule(config: TinySDConfig) -> dict[str, Any]:
    """Stable Diffusion's noise schedule (SD 1.x and SDXL alike): scaled-linear betas 0.00085 to 0.012."""
    return {
        "num_train_timesteps": config.train_timesteps,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
    }


def _build_sdxl(config: TinySDConfig, vae: Any, tokenizer: CLIPTokenizer, text_config: CLIPTextConfig) -> Any:
    """The tiny StableDiffusionXLPipeline around ``vae``: both text encoders share one tokenizer."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    n_unet = len(config.unet_channels)
    unet = UNet2DConditionModel(
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_unet - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_unet - 1) + ("UpBlock2D",),
        cross_attention_dim=2 * config.text_width,  # both encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=config.text_width + 6 * TIME_EMBED_DIM,  # pooled text + six ids
        **_unet_sizes(config),
    )
    scheduler = EulerDiscreteScheduler(timestep_spacing="leading", **_sd_schedule(config))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _build_sd3(
    config: TinySDConfig, vae: Any, tokenizer: CLIPTokenizer, text_config: CLIPTextConfig, captions: Iterable[str]
) -> Any:
    """The tiny StableDiffusion3Pipeline around ``vae``: both CLIP encoders share one tokenizer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    t5, t5_tokenizer = _build_t5(config, captions)
    t5_width = t5.config.d_model
    latent = config.resolution // 2 ** (len(config.vae_channels) - 1)
    heads = config.unet_channels[-1] // config.attention_head_dim
    transformer = SD3Transformer2DModel(
        sample_size=latent,
        patch_size=SD3_PATCH,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        num_layers=SD3_LAYERS,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=heads,
        joint_attention_dim=t5_width,
        caption_projection_dim=heads * config.attention_head_dim,
        pooled_projection_dim=2 * config.text_width,  # both CLIP pooled projections side by side
        pos_embed_max_size=latent // SD3_PATCH,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.train_timesteps, shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )


def _build_t5(config: TinySDConfig, captions: Iterable[str]) -> tuple[Any, Any]:
    """A T5 encoder and its tokenizer learned from ``captions``: four times the CLIP width (SD3 and Flux pair a
    T5 several times wider than their CLIP encoders), as many layers and heads as the CLIP encoder."""
    from transformers import T5Config, T5EncoderModel

    width, tokenizer = 4 * config.text_width, build_t5_tokenizer(captions)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=width,
            d_kv=width // config.text_heads,
            d_ff=2 * width,
            num_layers=config.text_layers,
            num_heads=config.text_heads,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    return t5, tokenizer


def _build_flux(
    config: TinySDConfig, vae: Any, tokenizer: CLIPTokenizer, text_config: CLIPTextConfig, captions: Iterable[str]
) -> Any:
    """The tiny FluxPipeline around ``vae``, not guidance-distilled (as FLUX.1-schnell)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    latent, head = config.resolution // 2 ** (len(config.vae_channels) - 1), config.attention_head_dim
    if latent % 2 or head % 2:
        raise ConfigError(
            f"a Flux model packs its latents in 2 x 2 patches and splits its heads over rotary axes: "
            f"the {latent}px latents and the attention head size {head} must be even"
        )
    t5, t5_tokenizer = _build_t5(config, captions)
    axis = 2 * (head * 7 // 32)  # Flux splits its 128-wide heads 16 / 56 / 56 over (id kind, row, column)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * config.latent_channels,  # a 2 x 2 patch of latents is one token
        num_layers=FLUX_LAYERS[0],
        num_single_layers=FLUX_LAYERS[1],
        attention_head_dim=head,
        num_attention_heads=config.unet_channels[-1] // head,
        joint_attention_dim=t5.config.d_model,
        pooled_projection_dim=config.text_width,
        axes_dims_rope=(head - 2 * axis, axis, axis),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=config.train_timesteps,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
