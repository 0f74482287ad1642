"""Pretraining of the public base model: the tiny VAE first, then the UNet together with the text encoder.

The text encoder is trained here (Stable Diffusion practice freezes it later, in fine-tuning): with a frozen
random text encoder the tiny UNet ignored the prompt. About 10% of captions are dropped to the empty prompt
so that classifier-free guidance has an unconditional branch.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffmia.data import load_image_folder
from diffmia.errors import DataError
from diffmia.lab.pipeline import TinySDConfig, build_pipeline
from diffmia.lab.training import (
    TrainImages,
    check_resumable,
    denoising_loss,
    epoch_batches,
    step_rng,
    to_tensor,
    torch_generator,
    train,  # fmt: skip
)
from diffmia.records import Sample
from diffmia.tables import atomic_path

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe of the shipped base model (its card records these values)."""

    vae_steps: int = 400
    vae_learning_rate: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 3500
    unet_learning_rate: float = 5e-4
    batch_size: int = 64
    caption_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250


def select_split(samples: Sequence[Sample], extra: dict[str, dict[str, Any]], split: str | None) -> list[Sample]:
    """The samples whose metadata ``split`` equals ``split`` (all samples when ``split`` is None)."""
    if split is None:
        return list(samples)
    chosen = [s for s in samples if extra[s.id].get("split") == split]
    if not chosen:
        found = sorted({str(e.get("split")) for e in extra.values()})
        raise DataError(f"no image has split {split!r} in its metadata (found: {', '.join(found)})")
    return chosen


def _caption_ids(pipe: StableDiffusionPipeline, captions: Sequence[str]) -> Any:
    return pipe.tokenizer(
        list(captions), padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip


def pretrain(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = "public",
    recipe: PretrainConfig | None = None,
    model: TinySDConfig | None = None,
    resume: bool = True,
    show_progress: bool = True,
    command: str | None = None,
) -> Path:
    """Pretrain the tiny base model on ``data_dir`` (its ``split`` part); write the pipeline and its card.

    Returns the pipeline folder ``out_dir/pipeline``. Checkpoints go to ``out_dir/checkpoints``; a rerun
    resumes from them.
    """
    import torch
    from diffusers import DDPMScheduler

    recipe, model = recipe or PretrainConfig(), model or TinySDConfig()
    out = Path(out_dir)
    folder = load_image_folder(data_dir, require_captions=True)
    samples = select_split(folder.samples, folder.extra, split)
    data = TrainImages.from_samples(samples, model.resolution)
    stamp = {"recipe": recipe.__dict__, "model": model.to_dict(), "data": str(Path(data_dir).resolve()),
             "split": split}  # fmt: skip
    check_resumable(out / "checkpoints", json.loads(json.dumps(stamp)), resume)  # tuples as the stamp reads back
    began = time.perf_counter()
    pipe = build_pipeline(data.captions, model, seed=recipe.seed)
    n = len(data)
    pixels = data.batch(np.arange(n), np.random.default_rng(0))  # centre crop, no flip: fixed images
    all_images = to_tensor(pixels)

    def vae_loss(modules: Sequence[Any], micro: int, process: int) -> Any:
        (vae,) = modules
        rng = step_rng(recipe.seed, micro, process)
        x = all_images[epoch_batches(n, recipe.batch_size, recipe.seed, micro)]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch_generator(rng))
        reconstruction = vae.decode(z).sample
        return torch.nn.functional.mse_loss(reconstruction, x) + recipe.vae_kl_weight * posterior.kl().mean()

    vae_log = train(
        modules=[pipe.vae], loss_fn=vae_loss, max_steps=recipe.vae_steps, learning_rate=recipe.vae_learning_rate,
        seed=recipe.seed, checkpoint_dir=out / "checkpoints" / "vae", checkpoint_every=recipe.checkpoint_every,
        resume=resume, description="pretrain VAE", show_progress=show_progress,
    )  # fmt: skip
    pipe.vae.requires_grad_(False).eval()
    with torch.no_grad():
        posterior = pipe.vae.encode(all_images).latent_dist
        mean, std = posterior.mean, posterior.std
    scaling = float(1.0 / mean.std())
    pipe.vae.register_to_config(scaling_factor=scaling)

    ids = _caption_ids(pipe, data.captions)
    empty = _caption_ids(pipe, [""])[0]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def unet_loss(modules: Sequence[Any], micro: int, process: int) -> Any:
        unet, text_encoder = modules
        rng = step_rng(recipe.seed, micro, process, stream=1)
        index = epoch_batches(n, recipe.batch_size, recipe.seed + 1, micro)
        generator = torch_generator(rng)
        batch_ids = ids[index].clone()
        batch_ids[torch.from_numpy(rng.random(len(index)) < recipe.caption_dropout)] = empty
        context = text_encoder(batch_ids)[0]
        return denoising_loss(unet, noise_scheduler, mean[index], std[index], scaling, context, generator)

    unet_log = train(
        modules=[pipe.unet, pipe.text_encoder], loss_fn=unet_loss, max_steps=recipe.unet_steps,
        learning_rate=recipe.unet_learning_rate, seed=recipe.seed, checkpoint_dir=out / "checkpoints" / "unet",
        checkpoint_every=recipe.checkpoint_every, resume=resume, description="pretrain UNet + text encoder",
        show_progress=show_progress,
    )  # fmt: skip
    pipeline_dir = out / "pipeline"
    pipe.save_pretrained(pipeline_dir)
    card = {
        "kind": "diffmia tiny Stable Diffusion base",
        "data": {"folder": str(data_dir), "split": split, "n_images": n, "ids_sha256": _ids_digest(samples)},
        "model": model.to_dict(),
        "recipe": recipe.__dict__,
        "vae": {
            "steps": recipe.vae_steps,
            "final_loss": vae_log.final_loss(),
            "resumed_from": vae_log.resumed_from,
        },
        "unet": {
            "steps": recipe.unet_steps,
            "final_loss": unet_log.final_loss(),
            "resumed_from": unet_log.resumed_from,
        },
        "latent_scaling_factor": scaling,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": command or f"diffmia.lab.pretrain.pretrain({str(data_dir)!r}, {str(out_dir)!r})",
    }
    with atomic_path(out / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")
    return pipeline_dir


def _ids_digest(samples: Sequence[Sample]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(s.id for s in samples)).encode()).hexdigest()
