"""Fine-tuning recipes for targets and shadows: full or LoRA fine-tunes of the denoiser of a Stable Diffusion 1.x
/ 2.x, SDXL, SD3 or Flux pipeline (the built-in base, Stable Diffusion v1-5, SDXL base, FLUX.1, ...) on a captioned
image folder: the UNet by its noise schedule's objective, SD3's and Flux's transformers by flow matching. The family
is read from the pipeline's class (:mod:`diffmia.families`); the text encoders and the VAE stay frozen, as in Stable
Diffusion practice.

The output folder holds ``pipeline/`` (full fine-tune: a complete pipeline) or ``lora/`` (LoRA weights saved
with the family's ``save_lora_weights``, loadable by stock ``load_lora_weights``), and ``card.json``: the whole
regime, the family included.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffmia.assets import resolve_model
from diffmia.config import FinetuneConfig
from diffmia.data import load_image_folder
from diffmia.errors import ConfigError, DataError, TargetError
from diffmia.families import (
    Conditioning,
    condition,
    family_of,
    family_of_class,
    latent_shift,
    training_scheduler,
)
from diffmia.files import atomic_path
from diffmia.lab.privacy import PrivacyPlan, plan_privacy, poisson_batch
from diffmia.lab.seeding import step_rng, torch_generator
from diffmia.lab.training import (
    TrainImages,
    TrainingLog,
    denoising_loss,
    epoch_batches,
    refuse_finished,
    to_tensor,
    train,
    training_folder,
)
from diffmia.records import Sample

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def load_pipeline(model: str | Path) -> DiffusionPipeline:
    """The pipeline of ``builtin``, a local folder or a hub id, of a family diffmia fine-tunes; safety checker off.

    Its class is read first (model_index.json), so a model of another family is refused before its weights load.
    """
    from diffusers import DiffusionPipeline

    source = resolve_model(model)
    local = Path(source).exists()
    try:
        index = DiffusionPipeline.load_config(source, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot load a diffusers pipeline from {source!r}: {exc}") from None
    family_of_class(index.get("_class_name"))
    options = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    try:
        return DiffusionPipeline.from_pretrained(source, local_files_only=local, **options)
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot load a diffusers pipeline from {source!r}: {exc}") from None


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

    recipe = recipe or FinetuneConfig()
    out = Path(out_dir)
    # 1. the pipeline and the images, checked before anything trains or the output folder is made
    inputs = _load_inputs(model, data_dir, out, recipe)
    with training_folder(out, "fine-tune", inputs.stamp, resume):  # one run at a time in a folder
        pipe, n = inputs.pipe, len(inputs.data)
        # 2. the accelerator; the VAE and text encoder frozen on its device, the UNet (or its LoRA adapters) trainable
        began = time.perf_counter()
        accelerator = Accelerator(
            gradient_accumulation_steps=recipe.gradient_accumulation_steps, mixed_precision=recipe.mixed_precision
        )
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(recipe.mixed_precision, torch.float32)
        device = accelerator.device
        _make_trainable(pipe, recipe, device, dtype)
        noise_scheduler, family = training_scheduler(pipe), family_of(pipe)
        denoiser = getattr(pipe, family.denoiser)
        # 3. the loss, the DP-SGD plan and the early stopping
        posterior, context = _encode_once(pipe, inputs.data, device, dtype)
        steps = recipe.total_steps(n)
        plan = plan_privacy(recipe.dp, n, recipe.batch_size, steps) if recipe.dp is not None else None
        stopper = _early_stopping(inputs, recipe, out, noise_scheduler, device, dtype)
        loss_fn = _FinetuneLoss(
            vae=pipe.vae,
            data=inputs.data,
            noise_scheduler=noise_scheduler,
            scaling=float(pipe.vae.config.scaling_factor),
            shift=latent_shift(pipe.vae),
            posterior=posterior,
            context=context,
            recipe=recipe,
            plan=plan,
            device=device,
            dtype=dtype,
        )
        # 4. the training
        log = train(
            modules=[denoiser],
            loss_fn=loss_fn,
            max_steps=steps,
            learning_rate=recipe.learning_rate,
            seed=recipe.seed,
            checkpoint_dir=out / "checkpoints",
            checkpoint_every=recipe.checkpoint_every,
            lr_scheduler=recipe.lr_scheduler,
            lr_warmup_steps=recipe.lr_warmup_steps,
            gradient_accumulation_steps=recipe.gradient_accumulation_steps,
            mixed_precision=recipe.mixed_precision,
            resume=resume,
            description=f"fine-tune ({recipe.method}{', DP-SGD' if plan else ''})",
            show_progress=show_progress,
            accelerator=accelerator,
            privacy=plan,
            should_stop=stopper.should_stop if stopper is not None else None,
        )
        # 5. the weights and the card: the result, so the checkpoints go
        _save_weights(out, pipe, accelerator, denoiser, recipe)
        card = _card(inputs, recipe, log, log.stopped_at or steps, plan, stopper, began, device)
        with atomic_path(out / "card.json") as tmp:
            tmp.write_text(json.dumps(card, indent=2) + "\n")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return out


@dataclass(frozen=True)
class _Inputs:
    """What a fine-tune starts from: the pipeline, and the images split into training and held-out ones."""

    model: str | Path
    data_dir: str | Path
    pipe: Any
    training: tuple[Sample, ...]
    held_out: tuple[Sample, ...]  # for early stopping
    data: TrainImages  # the training images at the fine-tune's resolution
    stamp: dict[str, Any]  # the settings a resumed run must share


def _load_inputs(model: str | Path, data_dir: str | Path, out: Path, recipe: FinetuneConfig) -> _Inputs:
    """Load and check the pipeline and the images."""
    refuse_finished(out, "fine-tune")  # before minutes of loading; checked again under the folder's lock
    folder = load_image_folder(data_dir, require_captions=True)
    pipe = load_pipeline(model)
    stamp = {"recipe": recipe.model_dump(mode="json"), "model": str(model), "data": str(Path(data_dir).resolve())}
    resolution = recipe.resolution or int(pipe.vae.config.sample_size)
    training, held_out = _hold_out(folder.samples, recipe)
    data = TrainImages.from_samples(
        training, resolution, center_crop=recipe.center_crop, random_flip=recipe.random_flip
    )
    return _Inputs(model, data_dir, pipe, training, held_out, data, stamp)


def _make_trainable(pipe: Any, recipe: FinetuneConfig, device: Any, dtype: Any) -> None:
    """Freeze the VAE and text encoders on ``device``; make the UNet trainable, whole or through new LoRA adapters."""
    import torch

    for frozen in (pipe.vae, *(getattr(pipe, name) for name in family_of(pipe).text_encoders)):
        frozen.requires_grad_(False).to(device)
        if dtype != torch.float32:  # mixed precision: the frozen parts run in half precision
            frozen.to(dtype=dtype)
    denoiser = getattr(pipe, family_of(pipe).denoiser)
    denoiser.requires_grad_(recipe.method == "full")
    if recipe.method == "lora":
        with torch.random.fork_rng():  # the adapters' random initialisation is part of the seeded recipe
            torch.manual_seed(recipe.seed)
            _add_lora(denoiser, recipe)


def _encode_once(pipe: Any, data: TrainImages, device: Any, dtype: Any) -> tuple[Any, Conditioning]:
    """(the VAE posterior of every training image, the captions' conditioning), computed once.

    The posterior is None when the images are not fixed (random crops or flips): each batch is encoded as drawn.
    """
    import torch

    r = data.resolution
    fixed = data.center_crop and not data.random_flip and all(im.shape[:2] == (r, r) for im in data.images)
    with torch.no_grad():
        posterior = None
        if fixed:
            pixels = to_tensor(data.batch(np.arange(len(data)), np.random.default_rng(0))).to(device, dtype)
            posterior = pipe.vae.encode(pixels).latent_dist
    return posterior, condition(pipe, data.captions, r, device)


@dataclass(frozen=True)
class _FinetuneLoss:
    """The denoiser's training loss on a micro-batch: an epoch's batch, or under DP-SGD the step's Poisson sample."""

    vae: Any
    data: TrainImages
    noise_scheduler: Any
    scaling: float  # the VAE's latent scaling factor
    shift: float  # and its latent shift (SD3, Flux)
    posterior: Any  # the training images' posterior, encoded once (None: encode each batch as drawn)
    context: Conditioning  # the captions' conditioning
    recipe: FinetuneConfig
    plan: PrivacyPlan | None
    device: Any
    dtype: Any

    def __call__(self, modules: Sequence[Any], micro: int, process: int) -> Any:
        import torch

        (unet,) = modules
        rng = step_rng(self.recipe.seed, micro, process)
        index, weight = self._batch(micro)
        generator = torch_generator(rng)
        with torch.no_grad():
            if self.posterior is not None:
                mean, std = self.posterior.mean[index], self.posterior.std[index]
            else:
                dist = self.vae.encode(to_tensor(self.data.batch(index, rng)).to(self.device, self.dtype)).latent_dist
                mean, std = dist.mean, dist.std
        context = self.context[index]
        return weight * denoising_loss(
            unet,
            self.noise_scheduler,
            mean,
            std,
            self.scaling,
            context,
            generator,
            self.device,
            self.dtype,
            self.shift,
        )

    def _batch(self, micro: int) -> tuple[np.ndarray, float]:
        """The images of micro-batch ``micro``, and the weight of their loss."""
        n, seed = len(self.data), self.recipe.seed
        if self.plan is None:
            return epoch_batches(n, self.recipe.batch_size, seed, micro), 1.0
        index = poisson_batch(n, self.plan.sample_rate, seed, micro)
        if index.size == 0:  # an empty Poisson sample: a zero gradient, to which DP-SGD still adds noise
            return np.array([0]), 0.0
        return index, 1.0


def _early_stopping(
    inputs: _Inputs, recipe: FinetuneConfig, out: Path, noise_scheduler: Any, device: Any, dtype: Any
) -> _EarlyStopping | None:
    """The early stopping on the held-out images, if any were held out."""
    if not inputs.held_out:
        return None
    validation = TrainImages.from_samples(inputs.held_out, inputs.data.resolution)
    return _EarlyStopping(
        recipe, out / "checkpoints" / "validation.json", validation, inputs.pipe, noise_scheduler, device, dtype
    )


def _save_weights(out: Path, pipe: Any, accelerator: Any, denoiser: Any, recipe: FinetuneConfig) -> None:
    """The fine-tuned weights: the LoRA adapters (``lora/``), or the whole pipeline (``pipeline/``)."""
    if recipe.method == "lora":
        _save_lora(pipe, accelerator.unwrap_model(denoiser), out / "lora")
    else:
        pipe.save_pretrained(out / "pipeline")


def _card(
    inputs: _Inputs,
    recipe: FinetuneConfig,
    log: TrainingLog,
    trained: int,
    plan: PrivacyPlan | None,
    stopper: _EarlyStopping | None,
    began: float,
    device: Any,
) -> dict[str, Any]:
    """The fine-tune's card: the whole regime, from the base model and images to the privacy spent."""
    import torch

    n = len(inputs.data)
    return {
        "kind": "diffmia fine-tune",
        "base_model": str(inputs.model),
        "base_model_path": resolve_model(inputs.model),
        "family": family_of(inputs.pipe).name,
        "method": recipe.method,
        "recipe": recipe.model_dump(mode="json"),
        "data": {
            "folder": str(inputs.data_dir),
            "n_images": n,
            "ids_sha256": _digest([s.id for s in inputs.training]),
            "held_out_for_early_stopping": [s.id for s in inputs.held_out],
        },
        "resolution": inputs.data.resolution,
        "steps": trained,
        "passes_over_data": round(trained * recipe.batch_size * recipe.gradient_accumulation_steps / n, 2),
        "final_loss": log.final_loss(),
        "resumed_from": log.resumed_from,
        "scheduler": type(inputs.pipe.scheduler).__name__,
        "privacy": plan.card(trained) if plan is not None else None,
        "early_stopping": stopper.card(log.stopped_at) if stopper is not None else None,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "machine": f"{platform.machine()}, {device}, torch {torch.__version__}",
    }


def _hold_out(samples: Sequence[Any], recipe: FinetuneConfig) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(training images, images held out for early stopping), split by the recipe's seed."""
    if recipe.early_stopping_patience is None:
        return tuple(samples), ()
    n_out = max(1, round(recipe.validation_fraction * len(samples)))
    if len(samples) - n_out < 1:
        raise DataError(f"early stopping holds out {n_out} of {len(samples)} images and leaves none to train on")
    chosen = set(np.random.default_rng([recipe.seed, 31]).permutation(len(samples))[:n_out].tolist())
    return (
        tuple(s for i, s in enumerate(samples) if i not in chosen),
        tuple(s for i, s in enumerate(samples) if i in chosen),
    )


class _EarlyStopping:
    """Measures the held-out images' denoising loss every ``validate_every`` steps (the same noise, timesteps and
    posterior draws each time, so the numbers compare) and stops after ``patience`` measurements without a new
    best. The measurements are kept beside the checkpoints, so a resumed run decides exactly as the whole would."""

    def __init__(
        self,
        recipe: FinetuneConfig,
        path: Path,
        images: TrainImages,
        pipe: Any,
        noise_scheduler: Any,
        device: Any,
        dtype: Any,
    ) -> None:
        import torch

        self.recipe, self.path, self.noise_scheduler = recipe, path, noise_scheduler
        self.device, self.dtype = device, dtype
        self.scaling, self.shift = float(pipe.vae.config.scaling_factor), latent_shift(pipe.vae)
        with torch.no_grad():
            pixels = to_tensor(images.batch(np.arange(len(images)), np.random.default_rng(0))).to(device, dtype)
            self.posterior = pipe.vae.encode(pixels).latent_dist
        self.context = condition(pipe, images.captions, images.resolution, device)
        self.history: dict[int, float] = (
            {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
        )

    def loss(self, unet: Any) -> float:
        import torch

        generator = torch_generator(step_rng(self.recipe.seed, 0, 0, stream=21))
        with torch.no_grad():
            posterior = (self.posterior.mean, self.posterior.std, self.scaling, self.context)
            where = (self.device, self.dtype, self.shift)
            draws = [float(denoising_loss(unet, self.noise_scheduler, *posterior, generator, *where)) for _ in range(4)]
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
    """New LoRA adapters on the denoiser (a UNet or a transformer) at ``recipe.lora_target_modules``."""
    from peft import LoraConfig

    names = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()}
    full_names = {name for name, _ in unet.named_modules()}
    missing = [t for t in recipe.lora_target_modules if t not in names and not any(n.endswith(t) for n in full_names)]
    if missing:
        raise ConfigError(f"finetune.lora_target_modules: the denoiser has no module named {', '.join(missing)}")
    config = LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha or recipe.lora_rank,
        init_lora_weights="gaussian",
        target_modules=list(recipe.lora_target_modules),
    )
    unet.add_adapter(config)


def _save_lora(pipe: Any, denoiser: Any, directory: Path) -> None:
    """The denoiser's adapters in the diffusers layout of the pipeline's own class (the families' files differ).

    The keys stay PEFT's (``<module>.lora_A.weight`` / ``lora_B``), which ``load_lora_weights`` reads for every
    family. diffusers' older ``lora.down`` / ``lora.up`` naming (``convert_state_dict_to_diffusers``) is not used:
    with adapters on a UNet's ``proj_in`` / ``proj_out`` beside its attention projections, ``load_lora_weights``
    (diffusers 0.42, PEFT 0.21) silently drops the attention adapters of such a file.
    """
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(denoiser)
    key = f"{family_of(pipe).denoiser}_lora_layers"  # unet_lora_layers, transformer_lora_layers
    type(pipe).save_lora_weights(directory, **{key: layers}, safe_serialization=True)
