"""The training loop shared by pretraining and fine-tuning: seeded, resumable, built on accelerate.

Every source of randomness of micro-batch m (which images, crops, flips, caption drop-outs, noise and
timesteps, and the dropout masks of the modules themselves) is drawn from a generator seeded with (seed, m,
process), so two runs of one recipe train the same weights, and a run resumed from a checkpoint takes
exactly the steps the uninterrupted run would have taken. Checkpoints are written to a temporary folder and
renamed into place: a run killed at any moment resumes from its last complete checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from diffmia.errors import ConfigError
from diffmia.progress import progress
from diffmia.records import Sample

if TYPE_CHECKING:
    import torch

    from diffmia.lab.privacy import PrivacyPlan

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
MODULE_STREAM = 2**16  # the step_rng stream that seeds torch's global generator (loss functions use small streams)


def step_rng(seed: int, micro_step: int, process: int = 0, stream: int = 0) -> np.random.Generator:
    """The generator of one micro-batch: a pure function of its coordinates."""
    return np.random.default_rng([seed, micro_step, process, stream])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(int(rng.integers(2**62)))


@dataclass(frozen=True)
class TrainImages:
    """Training images resized so their shorter side is ``resolution`` (uint8 HWC), with their captions."""

    images: tuple[np.ndarray, ...]
    captions: tuple[str, ...]
    resolution: int
    center_crop: bool
    random_flip: bool

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[Sample],
        resolution: int,
        *,
        center_crop: bool = True,
        random_flip: bool = False,
    ) -> TrainImages:
        images = []
        for sample in samples:
            with Image.open(sample.image_path) as image:
                rgb = image.convert("RGB")
            scale = resolution / min(rgb.size)
            size = (max(resolution, round(rgb.width * scale)), max(resolution, round(rgb.height * scale)))
            if rgb.size != size:
                rgb = rgb.resize(size, Image.Resampling.BICUBIC)
            images.append(np.asarray(rgb))
        captions = tuple(s.caption or "" for s in samples)
        return cls(tuple(images), captions, resolution, center_crop, random_flip)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Images at ``indices`` cropped to resolution x resolution (centre or random) and flipped if asked."""
        r = self.resolution
        out = np.empty((len(indices), r, r, 3), dtype=np.uint8)
        for j, i in enumerate(indices):
            image = self.images[i]
            h, w = image.shape[:2]
            if self.center_crop:
                top, left = (h - r) // 2, (w - r) // 2
            else:
                top, left = int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))
            crop = image[top : top + r, left : left + r]
            if self.random_flip and rng.random() < 0.5:
                crop = crop[:, ::-1]
            out[j] = crop
        return out


def epoch_batches(n: int, batch_size: int, seed: int, micro_step: int) -> np.ndarray:
    """The indices of micro-batch ``micro_step``: epochs are seeded permutations cut into batches."""
    per_epoch = max(1, -(-n // batch_size))
    epoch, within = divmod(micro_step, per_epoch)
    order = np.random.default_rng([seed, epoch, 7]).permutation(n)
    return order[within * batch_size : (within + 1) * batch_size]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC in [0, 255] -> float NCHW in [-1, 1], as the VAE expects."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def denoising_loss(
    unet: Any,
    noise_scheduler: Any,
    mean: Any,
    std: Any,
    scaling: float,
    context: Any,
    generator: Any,
    device: Any = "cpu",
    dtype: Any = None,
) -> Any:
    """The diffusion training loss of one batch: sample latents from the VAE posterior (mean, std), noise them
    at random timesteps and regress the scheduler's target (the noise, or the velocity for v-prediction).

    Draws, in this order, from ``generator``: the posterior sample, the noise, the timesteps.
    """
    import torch

    dtype = dtype or mean.dtype
    with torch.no_grad():
        latents = (mean + std * torch.randn(mean.shape, generator=generator).to(device, dtype)) * scaling
    noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (len(latents),), generator=generator).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, context).sample
    return torch.nn.functional.mse_loss(prediction.float(), target.float())


@dataclass
class TrainingLog:
    """What a training run did: per-step losses, where it resumed from, wall time."""

    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    seconds: float = 0.0
    stopped_at: int | None = None  # the step an early stop ended training at

    def final_loss(self, window: int = 50) -> float:
        tail = self.losses[-window:]
        return float(np.mean(tail)) if tail else float("nan")


def latest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The complete checkpoint with the highest step in ``directory``, if any."""
    found = []
    if directory.is_dir():
        for entry in directory.iterdir():
            match = CHECKPOINT_PATTERN.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
    return max(found) if found else None


def check_resumable(checkpoints: Path, stamp: dict[str, Any], resume: bool) -> None:
    """Refuse to resume checkpoints written with settings other than ``stamp``; record ``stamp`` for next time."""
    import json

    from diffmia.tables import atomic_path

    path = checkpoints / "run.json"
    if resume and path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in stamp if stamp[k] != previous.get(k))
        if changed:
            raise ConfigError(
                f"{checkpoints} was written with another {', '.join(changed)}; "
                "use the same settings to resume, or another output folder"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(stamp))


def train(
    *,
    modules: Sequence[torch.nn.Module],
    loss_fn: Callable[[Sequence[Any], int, int], Any],
    max_steps: int,
    learning_rate: float,
    seed: int,
    checkpoint_dir: Path,
    checkpoint_every: int,
    lr_scheduler: str = "constant",
    lr_warmup_steps: int = 0,
    weight_decay: float = 1e-2,
    gradient_accumulation_steps: int = 1,
    max_grad_norm: float = 1.0,
    mixed_precision: str = "no",
    keep_checkpoints: int = 2,
    resume: bool = True,
    description: str = "training",
    show_progress: bool = True,
    accelerator: Any = None,
    privacy: PrivacyPlan | None = None,
    should_stop: Callable[[Sequence[Any], int], bool] | None = None,
) -> TrainingLog:
    """Optimise the trainable parameters of ``modules`` with AdamW for ``max_steps`` optimizer steps.

    ``loss_fn(prepared_modules, micro_step, process_index)`` returns the loss of one micro-batch; it must
    draw all its randomness from :func:`step_rng` so that resuming is exact. Pass an ``accelerator`` when
    the caller must place other tensors on its device first; it must use ``gradient_accumulation_steps``.

    With a ``privacy`` plan the single module trains by DP-SGD (:mod:`diffmia.lab.privacy`): ``loss_fn`` must
    then compute the mean loss of that step's Poisson sample, and ``max_grad_norm`` gives way to per-sample
    clipping. ``should_stop(prepared_modules, steps_done)`` is asked after every step and ends training early
    when it says so (it must decide from the weights alone, so that a resumed run stops where the whole would).
    """
    import torch
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    if max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    if accelerator is None:
        accelerator = Accelerator(
            gradient_accumulation_steps=gradient_accumulation_steps, mixed_precision=mixed_precision
        )
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_scheduler(
        lr_scheduler, optimizer=optimizer, num_warmup_steps=lr_warmup_steps, num_training_steps=max_steps
    )
    private_optimizer = None
    if privacy is not None:
        from diffmia.lab.privacy import make_private, seed_noise

        if len(modules) != 1 or gradient_accumulation_steps != 1:
            raise ConfigError("DP-SGD trains one module with one Poisson-sampled batch per step")
        wrapped, optimizer = make_private(modules[0], optimizer, privacy)
        modules, private_optimizer = [wrapped], optimizer
    prepared = accelerator.prepare(*modules, optimizer, scheduler)
    models, optimizer, scheduler = list(prepared[:-2]), prepared[-2], prepared[-1]
    log = TrainingLog()
    start = 0
    found = latest_checkpoint(checkpoint_dir) if resume else None
    if found is not None:
        start, path = found
        accelerator.load_state(str(path))
        log.resumed_from = start
    began = time.perf_counter()
    for model in models:
        model.train()
    # torch's global generator (dropout, and anything else a module draws by itself) is seeded per micro-step too,
    # inside a fork so that the caller's random state is left as it was
    with progress(max_steps, description, start=start, enabled=show_progress) as advance, torch.random.fork_rng():
        for step in range(start, max_steps):
            total = 0.0
            for micro in range(gradient_accumulation_steps):
                with accelerator.accumulate(*models):
                    index = step * gradient_accumulation_steps + micro
                    torch.manual_seed(
                        int(step_rng(seed, index, accelerator.process_index, MODULE_STREAM).integers(2**62))
                    )
                    loss = loss_fn(models, index, accelerator.process_index)
                    accelerator.backward(loss)
                    if private_optimizer is not None:
                        seed_noise(private_optimizer, seed, step)
                    elif accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                total += float(loss.detach()) / gradient_accumulation_steps
            log.losses.append(total)
            advance(1, f"loss {total:.4f}")
            done = step + 1
            if should_stop is not None and done < max_steps and should_stop(models, done):
                log.stopped_at = done
                break
            if checkpoint_every and done % checkpoint_every == 0 and done < max_steps:
                _save_checkpoint(accelerator, checkpoint_dir, done, keep_checkpoints)
    log.seconds = time.perf_counter() - began
    if private_optimizer is not None:
        accelerator.unwrap_model(models[0]).remove_hooks()  # the module is a plain module again
    accelerator.wait_for_everyone()
    return log


def _save_checkpoint(accelerator: Any, directory: Path, step: int, keep: int) -> None:
    """Write ``step-N`` atomically (temporary folder, then rename) and keep only the newest ``keep``."""
    if not accelerator.is_main_process:
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    final = directory / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    complete = sorted((int(m.group(1)), e) for e in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(e.name)))
    for _, old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
