"""The training loop shared by pretraining and fine-tuning: seeded, resumable, built on accelerate.

Every source of randomness of micro-batch m (which images, crops, flips, caption drop-outs, noise and
timesteps, and the dropout masks of the modules themselves) is drawn from a generator seeded with (seed, m,
process), so two runs of one recipe train the same weights, and a run resumed from a checkpoint takes
exactly the steps the uninterrupted run would have taken. Checkpoints are written to a temporary folder and
renamed into place: a run killed at any moment resumes from its last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from diffmia.errors import ConfigError, DataError
from diffmia.files import atomic_path, exclusive_lock
from diffmia.images import load_rgb
from diffmia.lab.seeding import step_rng
from diffmia.progress import progress
from diffmia.records import Sample

if TYPE_CHECKING:
    import torch

    from diffmia.families import Conditioning
    from diffmia.lab.privacy import PrivacyPlan

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
MODULE_STREAM = 2**16  # the step_rng stream that seeds torch's global generator (loss functions use small streams)


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
            rgb = load_rgb(sample.image_path)
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
    context: Conditioning,
    generator: Any,
    device: Any = "cpu",
    dtype: Any = None,
    shift: float = 0.0,
) -> Any:
    """The training loss of one batch: sample latents from the VAE posterior (mean, std), shifted by ``shift`` and
    scaled by ``scaling``; noise them at random levels and regress the target, the denoiser conditioned on
    ``context`` as its family's pipeline conditions it. A diffusion scheduler (DDPM) gives the noise, or the velocity
    for v-prediction, at a uniform timestep; a flow-matching one gives x_s = (1 - s) x0 + s noise at one of its
    noise levels s, uniformly drawn, and the velocity noise - x0.

    Draws, in this order, from ``generator``: the posterior sample, the noise, the timesteps.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    dtype = dtype or mean.dtype
    with torch.no_grad():
        sample = mean + std * torch.randn(mean.shape, generator=generator).to(device, dtype)
        latents = (sample - shift) * scaling
    noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
    steps = noise_scheduler.config.num_train_timesteps
    drawn = torch.randint(0, steps, (len(latents),), generator=generator)
    if isinstance(noise_scheduler, FlowMatchEulerDiscreteScheduler):
        timesteps = noise_scheduler.timesteps[drawn].to(device)
        sigmas = noise_scheduler.sigmas[drawn].to(device, dtype).view(-1, *[1] * (latents.ndim - 1))
        noisy, target = (1 - sigmas) * latents + sigmas * noise, noise - latents
    else:
        timesteps = drawn.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
    prediction = context.predict(unet, noisy, timesteps)
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
    path = checkpoints / "run.json"
    if resume and path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} cannot be read ({exc}); delete {checkpoints} to start over") from None
        if not isinstance(previous, dict):
            raise ConfigError(f"{path} is not a JSON object; delete {checkpoints} to start over")
        changed = sorted(k for k in stamp if stamp[k] != previous.get(k))
        if changed:
            raise ConfigError(
                f"{checkpoints} was written with another {', '.join(changed)}; "
                "use the same settings to resume, or another output folder"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(stamp))


def refuse_finished(out: Path, what: str) -> None:
    """Refuse an output folder that already holds a finished ``what`` (its card.json): never overwrite one in place."""
    if (out / "card.json").exists():
        raise DataError(f"{out} already holds a finished {what} (card.json); choose another output folder")


@contextlib.contextmanager
def training_folder(out: Path, what: str, stamp: dict[str, Any], resume: bool) -> Iterator[None]:
    """Hold the output folder ``out`` of one training run of a ``what`` for the ``with`` block: refused at once
    while another process trains in it (an exclusive lock: they would share and delete each other's checkpoints),
    when it holds a finished result, or when its checkpoints were written with settings other than ``stamp``."""
    with exclusive_lock(out, f"{what} folder"):
        refuse_finished(out, what)
        check_resumable(out / "checkpoints", stamp, resume)
        yield


@dataclass(frozen=True)
class _Run:
    """A prepared training run: what each of its steps uses, and when it checkpoints or stops."""

    accelerator: Any
    models: list[Any]  # prepared by accelerate
    optimizer: Any
    scheduler: Any
    params: list[Any]  # the trainable parameters, for gradient clipping
    private_optimizer: Any  # DP-SGD's optimizer, whose noise each step seeds (None: no DP-SGD)
    loss_fn: Callable[[Sequence[Any], int, int], Any]
    seed: int
    accumulation: int
    max_grad_norm: float
    max_steps: int
    checkpoint_dir: Path
    checkpoint_every: int
    keep_checkpoints: int
    should_stop: Callable[[Sequence[Any], int], bool] | None


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

    if max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    # 1. the accelerator, and AdamW with its schedule (wrapped for DP-SGD with a privacy plan)
    if accelerator is None:
        accelerator = Accelerator(
            gradient_accumulation_steps=gradient_accumulation_steps, mixed_precision=mixed_precision
        )
    schedule = (learning_rate, weight_decay, lr_scheduler, lr_warmup_steps, max_steps)
    modules, params, optimizer, scheduler, private_optimizer = _optimizer(
        modules, schedule, privacy, gradient_accumulation_steps
    )
    # 2. prepared by accelerate, and restored from the newest checkpoint when resuming
    prepared = accelerator.prepare(*modules, optimizer, scheduler)
    run = _Run(
        accelerator=accelerator,
        models=list(prepared[:-2]),
        optimizer=prepared[-2],
        scheduler=prepared[-1],
        params=params,
        private_optimizer=private_optimizer,
        loss_fn=loss_fn,
        seed=seed,
        accumulation=gradient_accumulation_steps,
        max_grad_norm=max_grad_norm,
        max_steps=max_steps,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        should_stop=should_stop,
    )
    log = TrainingLog()
    start = _resume(accelerator, checkpoint_dir, log) if resume else 0
    # 3. the remaining steps, in a fork of torch's random state so that the caller's is left as it was
    began = time.perf_counter()
    with progress(max_steps, description, start=start, enabled=show_progress) as advance, torch.random.fork_rng():
        _run_steps(run, start, log, advance)
    log.seconds = time.perf_counter() - began
    # 4. the module handed back plain
    if private_optimizer is not None:
        accelerator.unwrap_model(run.models[0]).remove_hooks()
    accelerator.wait_for_everyone()
    return log


def _optimizer(
    modules: Sequence[Any], schedule: tuple[float, float, str, int, int], privacy: PrivacyPlan | None, accumulation: int
) -> tuple[Sequence[Any], list[Any], Any, Any, Any]:
    """AdamW with its schedule (learning rate, weight decay, scheduler, warm-up, steps) over the trainable
    parameters, wrapped for DP-SGD with a privacy plan: the modules, parameters, optimizer, scheduler, and the
    private optimizer (None without DP-SGD)."""
    params, optimizer, scheduler = _adamw(modules, *schedule)
    if privacy is None:
        return modules, params, optimizer, scheduler, None
    modules, optimizer = _privatise(modules, optimizer, privacy, accumulation)
    return modules, params, optimizer, scheduler, optimizer


def _adamw(
    modules: Sequence[Any], learning_rate: float, weight_decay: float, lr_scheduler: str, warmup: int, max_steps: int
) -> tuple[list[Any], Any, Any]:
    """(the trainable parameters of ``modules``, AdamW over them, its learning-rate schedule)."""
    import torch
    from diffusers.optimization import get_scheduler

    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_scheduler(lr_scheduler, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
    return params, optimizer, scheduler


def _privatise(
    modules: Sequence[Any], optimizer: Any, privacy: PrivacyPlan, accumulation: int
) -> tuple[list[Any], Any]:
    """The one module wrapped to record per-sample gradients, and the optimizer wrapped to clip and noise them."""
    from diffmia.lab.privacy import make_private

    if len(modules) != 1 or accumulation != 1:
        raise ConfigError("DP-SGD trains one module with one Poisson-sampled batch per step")
    wrapped, private = make_private(modules[0], optimizer, privacy)
    return [wrapped], private


def _resume(accelerator: Any, directory: Path, log: TrainingLog) -> int:
    """Restore the newest complete checkpoint in ``directory``, if any; the number of steps already done."""
    found = latest_checkpoint(directory)
    if found is None:
        return 0
    start, path = found
    accelerator.load_state(str(path))
    log.resumed_from = start
    return start


def _run_steps(run: _Run, start: int, log: TrainingLog, advance: Callable[[int, str], Any]) -> None:
    """Steps ``start`` to ``max_steps``, checkpointed every ``checkpoint_every``, or until ``should_stop`` says so."""
    for model in run.models:
        model.train()
    for step in range(start, run.max_steps):
        loss = _optimizer_step(run, step)
        log.losses.append(loss)
        advance(1, f"loss {loss:.4f}")
        done = step + 1
        if run.should_stop is not None and done < run.max_steps and run.should_stop(run.models, done):
            log.stopped_at = done
            return
        if run.checkpoint_every and done % run.checkpoint_every == 0 and done < run.max_steps:
            _save_checkpoint(run.accelerator, run.checkpoint_dir, done, run.keep_checkpoints)


def _optimizer_step(run: _Run, step: int) -> float:
    """Optimizer step ``step`` over its ``accumulation`` micro-batches; their mean loss.

    torch's global generator (dropout, and anything else a module draws by itself) is seeded per micro-batch, and
    DP-SGD's noise per step, so that a resumed run draws what the uninterrupted one would have drawn.
    """
    import torch

    total = 0.0
    for micro in range(run.accumulation):
        with run.accelerator.accumulate(*run.models):
            index = step * run.accumulation + micro
            process = run.accelerator.process_index
            torch.manual_seed(int(step_rng(run.seed, index, process, MODULE_STREAM).integers(2**62)))
            loss = run.loss_fn(run.models, index, process)
            run.accelerator.backward(loss)
            if run.private_optimizer is not None:
                from diffmia.lab.privacy import seed_noise

                seed_noise(run.private_optimizer, run.seed, step)
            elif run.accelerator.sync_gradients:
                run.accelerator.clip_grad_norm_(run.params, run.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        total += float(loss.detach()) / run.accumulation
    return total


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
