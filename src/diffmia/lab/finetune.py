"""Fine-tuning recipes for targets and shadows: full or LoRA fine-tunes of the UNet of any
``StableDiffusionPipeline``-compatible model (the built-in base, Stable Diffusion v1-5, ...) on a captioned
image folder. The text encoder and VAE stay frozen, as in Stable Diffusion practice.

The output folder holds ``pipeline/`` (full fine-tune: a complete pipeline) or ``lora/`` (LoRA weights saved
with ``save_lora_weights``, loadable by stock ``load_lora_weights``), and ``card.json``: the whole regime.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffmia.config import FinetuneConfig
from diffmia.data import load_image_folder
from diffmia.errors import ConfigError, DataError, TargetError
from diffmia.lab.privacy import plan_privacy, poisson_batch
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
from diffmia.tables import atomic_path

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

BUILTIN = "builtin"
BASE_DIR = Path(__file__).parent / "assets" / "base"


def resolve_model(model: str | Path) -> str:
    """``builtin`` is the shipped tiny base; anything else is a local folder or a hub id, as given."""
    if str(model) == BUILTIN:
        path = BASE_DIR / "pipeline"
        if not (path / "model_index.json").is_file():
            raise TargetError(f"the built-in base model is missing from {path}; reinstall diffmia")
        return str(path)
    return str(model)


def load_pipeline(model: str | Path) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from ``builtin``, a local folder or a hub id, safety checker off."""
    from diffusers import StableDiffusionPipeline

    source = resolve_model(model)
    local = Path(source).exists()
    try:
        return StableDiffusionPipeline.from_pretrained(
            source, safety_checker=None, requires_safety_checker=False, local_files_only=local
        )
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot load a Stable Diffusion pipeline from {source!r}: {exc}") from None


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def finetune(
    model: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: FinetuneConfig | None = None,
    *,
    resume: bool = True,
    show_progress: bool = True,
) -> Path:
    """Fine-tune ``model`` on the captioned image folder ``data_dir``; return ``out_dir``.

    Everything is checked before training starts (images, captions, recipe). A rerun with the same
    arguments resumes from the newest checkpoint in ``out_dir/checkpoints``.
    """
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    recipe = recipe or FinetuneConfig()
    out = Path(out_dir)
    if (out / "card.json").exists():
        raise DataError(f"{out} already holds a finished fine-tune (card.json); choose another output folder")
    folder = load_image_folder(data_dir, require_captions=True)
    pipe = load_pipeline(model)
    stamp = {"recipe": recipe.model_dump(mode="json"), "model": str(model), "data": str(Path(data_dir).resolve())}
    check_resumable(out / "checkpoints", stamp, resume)
    resolution = recipe.resolution or int(pipe.vae.config.sample_size)
    training, held_out = _hold_out(folder.samples, recipe)
    data = TrainImages.from_samples(
        training, resolution, center_crop=recipe.center_crop, random_flip=recipe.random_flip
    )
    began = time.perf_counter()
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, mixed_precision=recipe.mixed_precision
    )
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(recipe.mixed_precision, torch.float32)
    device = accelerator.device
    for frozen in (pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False).to(device)
        if dtype != torch.float32:  # mixed precision: the frozen parts run in half precision
            frozen.to(dtype=dtype)
    unet = pipe.unet
    unet.requires_grad_(recipe.method == "full")
    if recipe.method == "lora":
        with torch.random.fork_rng():  # the adapters' random initialisation is part of the seeded recipe
            torch.manual_seed(recipe.seed)
            _add_lora(unet, recipe)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    ids = pipe.tokenizer(
        list(data.captions), padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    n, scaling = len(data), float(pipe.vae.config.scaling_factor)
    fixed = (
        recipe.center_crop and not recipe.random_flip and all(im.shape[:2] == (resolution,) * 2 for im in data.images)
    )
    with torch.no_grad():
        # fixed images (no random crop or flip): encode once, sample the posterior per step
        posterior = (
            pipe.vae.encode(to_tensor(data.batch(np.arange(n), np.random.default_rng(0))).to(device, dtype)).latent_dist
            if fixed
            else None
        )
        embeddings = pipe.text_encoder(ids.to(device))[0]

    steps = recipe.total_steps(n)
    plan = plan_privacy(recipe.dp, n, recipe.batch_size, steps) if recipe.dp is not None else None
    stopper = None
    if held_out:
        validation = TrainImages.from_samples(held_out, resolution)
        stopper = _EarlyStopping(recipe, out / "checkpoints" / "validation.json", validation, pipe, noise_scheduler,
                                 device, dtype)  # fmt: skip

    def loss_fn(modules: Sequence[Any], micro: int, process: int) -> Any:
        (model_unet,) = modules
        rng = step_rng(recipe.seed, micro, process)
        weight = 1.0
        if plan is None:
            index = epoch_batches(n, recipe.batch_size, recipe.seed, micro)
        else:
            index = poisson_batch(n, plan.sample_rate, recipe.seed, micro)
            if index.size == 0:  # an empty Poisson sample: a zero gradient, to which DP-SGD still adds noise
                index, weight = np.array([0]), 0.0
        generator = torch_generator(rng)
        with torch.no_grad():
            if posterior is not None:
                mean, std = posterior.mean[index], posterior.std[index]
            else:
                dist = pipe.vae.encode(to_tensor(data.batch(index, rng)).to(device, dtype)).latent_dist
                mean, std = dist.mean, dist.std
        return weight * denoising_loss(
            model_unet, noise_scheduler, mean, std, scaling, embeddings[index], generator, device, dtype
        )

    log = train(
        modules=[unet], loss_fn=loss_fn, max_steps=steps, learning_rate=recipe.learning_rate, seed=recipe.seed,
        checkpoint_dir=out / "checkpoints", checkpoint_every=recipe.checkpoint_every,
        lr_scheduler=recipe.lr_scheduler, lr_warmup_steps=recipe.lr_warmup_steps,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, mixed_precision=recipe.mixed_precision,
        resume=resume, description=f"fine-tune ({recipe.method}{', DP-SGD' if plan else ''})",
        show_progress=show_progress, accelerator=accelerator, privacy=plan,
        should_stop=stopper.should_stop if stopper is not None else None,
    )  # fmt: skip
    trained = log.stopped_at or steps
    unet = accelerator.unwrap_model(unet)
    if recipe.method == "lora":
        _save_lora(pipe, unet, out / "lora")
    else:
        pipe.save_pretrained(out / "pipeline")
    card = {
        "kind": "diffmia fine-tune",
        "base_model": str(model),
        "base_model_path": resolve_model(model),
        "method": recipe.method,
        "recipe": recipe.model_dump(mode="json"),
        "data": {
            "folder": str(data_dir),
            "n_images": n,
            "ids_sha256": _digest([s.id for s in training]),
            "held_out_for_early_stopping": [s.id for s in held_out],
        },
        "resolution": resolution,
        "steps": trained,
        "passes_over_data": round(trained * recipe.batch_size * recipe.gradient_accumulation_steps / n, 2),
        "final_loss": log.final_loss(),
        "resumed_from": log.resumed_from,
        "scheduler": type(pipe.scheduler).__name__,
        "privacy": plan.card(trained) if plan is not None else None,
        "early_stopping": stopper.card(log.stopped_at) if stopper is not None else None,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "machine": f"{platform.machine()}, {device}, torch {torch.__version__}",
    }
    with atomic_path(out / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # finished: the card and weights are the result
    return out


def _hold_out(samples: Sequence[Any], recipe: FinetuneConfig) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(training images, images held out for early stopping), split by the recipe's seed."""
    if recipe.early_stopping_patience is None:
        return tuple(samples), ()
    n_out = max(1, round(recipe.validation_fraction * len(samples)))
    if len(samples) - n_out < 1:
        raise DataError(f"early stopping holds out {n_out} of {len(samples)} images and leaves none to train on")
    chosen = set(np.random.default_rng([recipe.seed, 31]).permutation(len(samples))[:n_out].tolist())
    return (tuple(s for i, s in enumerate(samples) if i not in chosen),
            tuple(s for i, s in enumerate(samples) if i in chosen))  # fmt: skip


class _EarlyStopping:
    """Measures the held-out images' denoising loss every ``validate_every`` steps (the same noise, timesteps and
    posterior draws each time, so the numbers compare) and stops after ``patience`` measurements without a new
    best. The measurements are kept beside the checkpoints, so a resumed run decides exactly as the whole would."""

    def __init__(self, recipe: FinetuneConfig, path: Path, images: TrainImages, pipe: Any, noise_scheduler: Any,
                 device: Any, dtype: Any) -> None:  # fmt: skip
        import torch

        self.recipe, self.path, self.noise_scheduler = recipe, path, noise_scheduler
        self.device, self.dtype = device, dtype
        self.scaling = float(pipe.vae.config.scaling_factor)
        ids = pipe.tokenizer(list(images.captions), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # fmt: skip
        with torch.no_grad():
            pixels = to_tensor(images.batch(np.arange(len(images)), np.random.default_rng(0))).to(device, dtype)
            self.posterior = pipe.vae.encode(pixels).latent_dist
            self.context = pipe.text_encoder(ids.to(device))[0]
        self.history: dict[int, float] = (
            {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
        )

    def loss(self, unet: Any) -> float:
        import torch

        generator = torch_generator(step_rng(self.recipe.seed, 0, 0, stream=21))
        with torch.no_grad():
            posterior = (self.posterior.mean, self.posterior.std, self.scaling, self.context)
            draws = [
                float(denoising_loss(unet, self.noise_scheduler, *posterior, generator, self.device, self.dtype))
                for _ in range(4)
            ]
        return float(np.mean(draws))

    def should_stop(self, modules: Sequence[Any], done: int) -> bool:
        if done % self.recipe.validate_every:
            return False
        self.history[done] = self.loss(modules[0])
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.history))
        seen = sorted((step, loss) for step, loss in self.history.items() if step <= done)
        best = min(range(len(seen)), key=lambda i: (seen[i][1], seen[i][0]))
        patience = self.recipe.early_stopping_patience or 0
        return len(seen) - 1 - best >= patience

    def card(self, stopped_at: int | None) -> dict[str, Any]:
        return {
            "patience": self.recipe.early_stopping_patience,
            "validate_every": self.recipe.validate_every,
            "held_out_images": len(self.context),
            "stopped_at": stopped_at,
            "validation_loss": sorted(self.history.items()),
        }


def _add_lora(unet: Any, recipe: FinetuneConfig) -> None:
    from peft import LoraConfig

    names = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()}
    full_names = {name for name, _ in unet.named_modules()}
    missing = [t for t in recipe.lora_target_modules if t not in names and not any(n.endswith(t) for n in full_names)]
    if missing:
        raise ConfigError(f"finetune.lora_target_modules: the UNet has no module named {', '.join(missing)}")
    config = LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha or recipe.lora_rank,
        init_lora_weights="gaussian",
        target_modules=list(recipe.lora_target_modules),
    )
    unet.add_adapter(config)


def _save_lora(pipe: Any, unet: Any, directory: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
