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
from diffmia.families import Family, encode, family_of, tokenize, training_scheduler
from diffmia.files import atomic_path, exclusive_lock
from diffmia.lab.pipeline import TinySDConfig, build_pipeline
from diffmia.lab.seeding import step_rng, torch_generator
from diffmia.lab.training import (
    TrainImages,
    TrainingLog,
    check_resumable,
    denoising_loss,
    epoch_batches,
    to_tensor,
    train,
)
from diffmia.records import Sample

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


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


def pretrain(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = "public",
    recipe: PretrainConfig | None = None,
    model: TinySDConfig | None = None,
    family: str = "sd",
    resume: bool = True,
    show_progress: bool = True,
    command: str | None = None,
) -> Path:
    """Pretrain a tiny base model of ``family`` (``sd``, ``sdxl``, ``sd3`` or ``flux``) on ``data_dir`` (its
    ``split`` part); write the pipeline and its card.

    Returns the pipeline folder ``out_dir/pipeline``. Checkpoints go to ``out_dir/checkpoints``; a rerun
    resumes from them.
    """
    import torch

    recipe, model = recipe or PretrainConfig(), model or TinySDConfig()
    out = Path(out_dir)
    # 1. the images, checked against the settings of the checkpoints a rerun resumes
    folder = load_image_folder(data_dir, require_captions=True)
    samples = select_split(folder.samples, folder.extra, split)
    data = TrainImages.from_samples(samples, model.resolution)
    stamp = {
        "recipe": recipe.__dict__,
        "model": model.to_dict(),
        "data": str(Path(data_dir).resolve()),
        "split": split,
        "family": family,
    }
    with exclusive_lock(out, "pretraining folder"):  # one run at a time: they would share checkpoints
        check_resumable(out / "checkpoints", json.loads(json.dumps(stamp)), resume)  # tuples as the stamp reads back
        # 2. a fresh pipeline and the images as one tensor (centre crop, no flip: fixed images)
        began = time.perf_counter()
        pipe = build_pipeline(data.captions, model, seed=recipe.seed, family=family)
        n = len(data)
        all_images = to_tensor(data.batch(np.arange(n), np.random.default_rng(0)))
        # 3. the VAE, then the UNet and text encoder on the latents of the trained VAE
        vae_log = _train_vae(pipe, all_images, recipe, out / "checkpoints" / "vae", resume, show_progress)
        latents = _fixed_latents(pipe, all_images)
        unet_log = _train_unet(pipe, data, latents, recipe, out / "checkpoints" / "unet", resume, show_progress)
        # 4. the pipeline and its card
        pipeline_dir = out / "pipeline"
        pipe.save_pretrained(pipeline_dir)
        card = {
            "kind": "diffmia tiny Stable Diffusion base",
            "family": family,
            "data": {"folder": str(data_dir), "split": split, "n_images": n, "ids_sha256": _ids_digest(samples)},
            "model": model.to_dict(),
            "recipe": recipe.__dict__,
            "vae": _stage_card(recipe.vae_steps, vae_log),
            "unet": _stage_card(recipe.unet_steps, unet_log),
            "latent_scaling_factor": latents.scaling,
            "latent_shift_factor": latents.shift,
            "wall_seconds": round(time.perf_counter() - began, 1),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
            "command": command or f"diffmia.lab.pretrain.pretrain({str(data_dir)!r}, {str(out_dir)!r})",
        }
        with atomic_path(out / "card.json") as tmp:
            tmp.write_text(json.dumps(card, indent=2) + "\n")
    return pipeline_dir


@dataclass(frozen=True)
class _VaeLoss:
    """The VAE's loss on a micro-batch: the reconstruction error of a posterior sample, plus a small KL term."""

    images: Any  # every training image, as one NCHW tensor
    recipe: PretrainConfig

    def __call__(self, modules: Sequence[Any], micro: int, process: int) -> Any:
        import torch

        (vae,) = modules
        rng = step_rng(self.recipe.seed, micro, process)
        x = self.images[epoch_batches(len(self.images), self.recipe.batch_size, self.recipe.seed, micro)]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch_generator(rng))
        reconstruction = vae.decode(z).sample
        return torch.nn.functional.mse_loss(reconstruction, x) + self.recipe.vae_kl_weight * posterior.kl().mean()


@dataclass(frozen=True)
class _Latents:
    """The trained VAE's posterior of every training image, and the factor that scales its latents to unit std."""

    mean: Any
    std: Any
    scaling: float
    shift: float  # subtracted before scaling (flow families, as SD3 and Flux; 0 for the others)


@dataclass(frozen=True)
class _UnetLoss:
    """The denoising loss of the UNet and text encoders on a micro-batch, with some captions dropped to the empty
    prompt (the unconditional branch of classifier-free guidance)."""

    family: Family
    ids: list[Any]  # the captions' token ids, one tensor per text encoder
    empty: list[Any]  # the empty prompt's token ids, one per text encoder
    resolution: int
    noise_scheduler: Any
    latents: _Latents
    recipe: PretrainConfig

    def __call__(self, modules: Sequence[Any], micro: int, process: int) -> Any:
        import torch

        unet, *encoders = modules
        recipe, latents = self.recipe, self.latents
        rng = step_rng(recipe.seed, micro, process, stream=1)
        index = epoch_batches(len(self.ids[0]), recipe.batch_size, recipe.seed + 1, micro)
        generator = torch_generator(rng)
        dropped = torch.from_numpy(rng.random(len(index)) < recipe.caption_dropout)
        batch_ids = []
        for ids, empty in zip(self.ids, self.empty, strict=True):
            batch = ids[index].clone()
            batch[dropped] = empty
            batch_ids.append(batch)
        context = encode(self.family, encoders, batch_ids, self.resolution)  # the text encoders train too
        mean, std = latents.mean[index], latents.std[index]
        return denoising_loss(
            unet, self.noise_scheduler, mean, std, latents.scaling, context, generator, shift=latents.shift
        )


def _train_vae(
    pipe: DiffusionPipeline,
    images: Any,
    recipe: PretrainConfig,
    checkpoints: Path,
    resume: bool,
    show_progress: bool,
) -> TrainingLog:
    """Train the VAE alone, then freeze it: the UNet learns on its latents."""
    log = train(
        modules=[pipe.vae],
        loss_fn=_VaeLoss(images, recipe),
        max_steps=recipe.vae_steps,
        learning_rate=recipe.vae_learning_rate,
        seed=recipe.seed,
        checkpoint_dir=checkpoints,
        checkpoint_every=recipe.checkpoint_every,
        resume=resume,
        description="pretrain VAE",
        show_progress=show_progress,
    )
    pipe.vae.requires_grad_(False).eval()
    return log


def _fixed_latents(pipe: DiffusionPipeline, images: Any) -> _Latents:
    """Encode every image once with the trained VAE; record the latents' scaling factor in the VAE's config (and
    for a flow family, as SD3 and Flux, the shift that centres them first)."""
    import torch

    with torch.no_grad():
        posterior = pipe.vae.encode(images).latent_dist
        mean, std = posterior.mean, posterior.std
    if family_of(pipe).objective == "flow":
        shift = float(mean.mean())
        scaling = float(1.0 / (mean - shift).std())
        pipe.vae.register_to_config(scaling_factor=scaling, shift_factor=shift)
        return _Latents(mean, std, scaling, shift)
    scaling = float(1.0 / mean.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    return _Latents(mean, std, scaling, 0.0)


def _train_unet(
    pipe: Any,
    data: TrainImages,
    latents: _Latents,
    recipe: PretrainConfig,
    checkpoints: Path,
    resume: bool,
    show_progress: bool,
) -> TrainingLog:
    """Train the UNet together with the text encoders on the fixed latents."""
    family = family_of(pipe)
    ids, empty = tokenize(pipe, data.captions), [i[0] for i in tokenize(pipe, [""])]
    scheduler = training_scheduler(pipe)
    loss = _UnetLoss(family, ids, empty, data.resolution, scheduler, latents, recipe)
    return train(
        modules=[getattr(pipe, name) for name in (family.denoiser, *family.text_encoders)],
        loss_fn=loss,
        max_steps=recipe.unet_steps,
        learning_rate=recipe.unet_learning_rate,
        seed=recipe.seed,
        checkpoint_dir=checkpoints,
        checkpoint_every=recipe.checkpoint_every,
        resume=resume,
        description="pretrain UNet + text encoder",
        show_progress=show_progress,
    )


def _stage_card(steps: int, log: TrainingLog) -> dict[str, Any]:
    return {"steps": steps, "final_loss": log.final_loss(), "resumed_from": log.resumed_from}


def _ids_digest(samples: Sequence[Sample]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(s.id for s in samples)).encode()).hexdigest()
