"""DP-SGD for fine-tuning: the defence whose cost an owner weighs against the leakage an audit measures.

Each step draws a Poisson sample of the training images (each one independently with probability q =
batch_size / n), computes every sample's gradient (Opacus's ``GradSampleModule``), clips each to ``max_grad_norm``,
adds Gaussian noise of std ``noise_multiplier x max_grad_norm`` to their sum and divides by the expected batch size
(Opacus's ``DPOptimizer``). The privacy spent is accounted by Opacus's RDP accountant for (noise_multiplier, q,
steps). The noise of step t is drawn from a generator seeded with (seed, t), so a resumed fine-tune takes exactly
the steps an uninterrupted one would have taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffmia.config import PrivacyConfig
from diffmia.errors import ConfigError, optional
from diffmia.lab.seeding import step_rng

ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD parameters of one fine-tune, fixed before training starts."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    expected_batch_size: int
    delta: float
    steps: int
    target_epsilon: float | None

    def epsilon(self, steps: int | None = None) -> float:
        """The epsilon spent after ``steps`` steps (default: all), by Opacus's RDP accountant."""
        accountants = _opacus("accountants")

        if self.noise_multiplier == 0:
            return float("inf")
        accountant = accountants.RDPAccountant()
        accountant.history = [(self.noise_multiplier, self.sample_rate, self.steps if steps is None else steps)]
        return float(accountant.get_epsilon(delta=self.delta))

    def card(self, steps_taken: int) -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "mechanism": "DP-SGD (Poisson sampling, per-sample clipping, Gaussian noise)",
            "epsilon": self.epsilon(steps_taken),
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.expected_batch_size,
            "steps": steps_taken,
            "accountant": f"opacus {version('opacus')} RDP",
        }


def _opacus(part: str = "") -> Any:
    """Opacus (or one of its modules), which the ``dp`` extra installs."""
    return optional(f"opacus.{part}" if part else "opacus", extra="dp", purpose="DP-SGD fine-tuning")


def plan_privacy(config: PrivacyConfig, n_images: int, batch_size: int, steps: int) -> PrivacyPlan:
    """Fix the sampling rate and noise multiplier (solved for ``config.epsilon`` when that is given)."""
    get_noise_multiplier = _opacus("accountants.utils").get_noise_multiplier

    if batch_size >= n_images:
        raise ConfigError(
            f"DP-SGD samples each image with probability batch_size / n; batch_size {batch_size} must be below the "
            f"{n_images} training images"
        )
    rate = batch_size / n_images
    sigma = config.noise_multiplier
    if sigma is None:
        assert config.epsilon is not None  # PrivacyConfig requires one of the two
        try:
            sigma = get_noise_multiplier(
                target_epsilon=config.epsilon,
                target_delta=config.delta,
                sample_rate=rate,
                steps=steps,
                accountant=ACCOUNTANT,
            )
        except ValueError as exc:
            raise ConfigError(f"finetune.dp: no noise multiplier reaches epsilon {config.epsilon}: {exc}") from None
    return PrivacyPlan(float(sigma), config.max_grad_norm, rate, batch_size, config.delta, steps, config.epsilon)


def poisson_batch(n: int, rate: float, seed: int, step: int) -> np.ndarray:
    """The images of step ``step``: each of ``n`` included independently with probability ``rate`` (may be empty)."""
    return np.flatnonzero(step_rng(seed, step, 0, stream=11).random(n) < rate)


def make_private(module: Any, optimizer: Any, plan: PrivacyPlan) -> tuple[Any, Any]:
    """Wrap ``module`` to record per-sample gradients and ``optimizer`` to clip, noise and average them."""
    import warnings

    opacus, optimizers = _opacus(), _opacus("optimizers")

    # Opacus's hooks fire on module outputs when the inputs need no gradient (frozen layers below the adapters)
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    wrapped = opacus.GradSampleModule(module, loss_reduction="mean")
    private = optimizers.DPOptimizer(
        optimizer,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.expected_batch_size,
        loss_reduction="mean",
    )
    return wrapped, private


def seed_noise(optimizer: Any, seed: int, step: int) -> None:
    """Draw step ``step``'s noise from its own generator (exact resume)."""
    import torch

    optimizer.generator = torch.Generator().manual_seed(int(step_rng(seed, step, 0, stream=12).integers(2**62)))
