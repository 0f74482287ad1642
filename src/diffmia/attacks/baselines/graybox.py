"""Gray-box reference attacks: they read the target's weights (a local diffusers pipeline), not only its outputs.

All three work in the VAE's latent space (the posterior mean of the candidate image) with the candidate's prompt
as condition and no guidance, and return scores where higher = more likely a member:

- ``loss``: minus the denoising loss (the network's noise-prediction error) at fixed timesteps and seeded noise,
  averaged (the loss-threshold attack of Matsumoto et al. 2023 / Carlini et al. 2023);
- ``secmi``: minus SecMI's t-error (Duan et al., ICML 2023): the latent is deterministically inverted (DDIM) to
  step t, taken one DDIM step further to t + delta and denoised back to t; members come back closer;
- ``pia``: minus PIA's error (Kong et al., ICLR 2024): the network's own noise prediction at t = 0 initialises
  the noise, the latent is noised with it to step t, and the prediction there is compared with it (l4 norm).

They read Stable Diffusion 1.x / 2.x, SDXL, SD3 and Flux pipelines, each conditioned as its own pipeline does
(:mod:`diffmia.families`). For SD3 and Flux, trained by flow matching, the loss attack noises to
x_s = (1 - s) x0 + s noise at s = t / 1000 and measures the error of the predicted velocity noise - x0; SecMI and
PIA are derived for DDIM on noise- or v-predicting models and are refused for them. The default timesteps are those
of the papers for 1,000-step schedules (SecMI t = 100, delta = 10; PIA t = 200).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from diffmia.errors import ConfigError
from diffmia.families import Conditioning, condition, family_of, latent_shift, native_size
from diffmia.records import FloatArray

GRAYBOX_ATTACKS = ("loss", "secmi", "pia")


class _Denoiser:
    """The pipeline's pieces the attacks need: latents, prompt conditioning, noise prediction, DDIM steps."""

    def __init__(self, pipe: Any) -> None:
        import torch

        self.family = family_of(pipe)  # a family diffmia cannot condition is refused before any work
        self.pipe, self.network = pipe, getattr(pipe, self.family.denoiser)
        self.size = native_size(pipe)  # the model's own resolution
        self.horizon = int(pipe.scheduler.config.num_train_timesteps)
        if self.family.objective == "flow":
            return
        self.alphas = pipe.scheduler.alphas_cumprod.to(torch.float64)
        self.prediction = pipe.scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"gray-box attacks need an epsilon or v prediction model, got {self.prediction!r}")

    def latents(self, images: Sequence[Any]) -> Any:
        import torch

        pipe, size = self.pipe, self.size  # images of any size are read at the model's resolution
        pixels = pipe.image_processor.preprocess(list(images), height=size, width=size).to(pipe.device, pipe.vae.dtype)
        with torch.no_grad():
            mean = pipe.vae.encode(pixels).latent_dist.mean
        return ((mean - latent_shift(pipe.vae)) * pipe.vae.config.scaling_factor).to(torch.float64)

    def context(self, prompts: Sequence[str]) -> Conditioning:
        return condition(self.pipe, prompts, self.size, self.pipe.device)

    def output(self, x: Any, t: int, context: Conditioning) -> Any:
        """The network's output for ``x`` at step ``t`` (noise, v or flow velocity), in float64."""
        import torch

        with torch.no_grad():
            steps = torch.full((len(x),), t, device=x.device)
            return context.predict(self.network, x.to(self.network.dtype), steps).to(torch.float64)

    def epsilon(self, x: Any, t: int, context: Conditioning) -> Any:
        """The predicted noise of ``x`` at step ``t`` (v predictions converted)."""
        out = self.output(x, t, context)
        if self.prediction == "epsilon":
            return out
        a = self.alphas[t]
        return a.sqrt() * out + (1 - a).sqrt() * x

    def ddim(self, x: Any, t: int, s: int, context: Conditioning) -> Any:
        """The deterministic DDIM map from step ``t`` to step ``s`` (s > t inverts, s < t denoises)."""
        eps = self.epsilon(x, t, context)
        a_t, a_s = self.alphas[t], self.alphas[s]
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def graybox_scores(
    pipe: Any,
    images: Sequence[Any],
    prompts: Sequence[str],
    attack: str,
    *,
    loss_timesteps: Sequence[int] = (100, 200, 300, 400),
    secmi_t: int = 100,
    secmi_delta: int = 10,
    pia_t: int = 200,
    seed: int = 0,
    batch_size: int = 64,
) -> FloatArray:
    """The ``attack``'s score of every (image, prompt) against the pipeline ``pipe`` (higher = member)."""
    import torch

    if attack not in GRAYBOX_ATTACKS:
        raise ConfigError(f"unknown gray-box attack {attack!r}; valid: {', '.join(GRAYBOX_ATTACKS)}")
    if len(images) != len(prompts):
        raise ConfigError(f"{len(images)} images but {len(prompts)} prompts")
    model = _Denoiser(pipe)
    if model.family.objective == "flow" and attack != "loss":
        raise ConfigError(
            f"{attack} is derived for DDIM on noise- or v-predicting models, and {model.family.name} "
            "models are trained by flow matching: use the loss attack"
        )
    horizon = model.horizon
    needed = {"loss": max(loss_timesteps), "secmi": secmi_t + secmi_delta, "pia": pia_t}[attack]
    if needed >= horizon:
        raise ConfigError(f"{attack}: timestep {needed} is beyond the schedule's {horizon} steps")
    scores = []
    for start in range(0, len(images), batch_size):
        x0 = model.latents(images[start : start + batch_size])
        context = model.context(prompts[start : start + batch_size])
        if attack == "loss":
            generator = torch.Generator().manual_seed(seed)  # the same noise for every batch position and run
            errors = []
            for t in loss_timesteps:
                noise = torch.randn(x0.shape[1:], generator=generator, dtype=torch.float64).expand_as(x0)
                if model.family.objective == "flow":  # x_s = (1 - s) x0 + s noise; the velocity noise - x0
                    xt = (1 - t / horizon) * x0 + t / horizon * noise
                    errors.append(((model.output(xt, t, context) - (noise - x0)) ** 2).mean(dim=(1, 2, 3)))
                    continue
                a = model.alphas[t]
                xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
                errors.append(((model.epsilon(xt, t, context) - noise) ** 2).mean(dim=(1, 2, 3)))
            error = torch.stack(errors).mean(dim=0)
        elif attack == "secmi":
            x = x0
            for t in range(0, secmi_t, secmi_delta):  # deterministic inversion to secmi_t (a shorter last step)
                x = model.ddim(x, t, min(t + secmi_delta, secmi_t), context)
            ahead = model.ddim(x, secmi_t, secmi_t + secmi_delta, context)
            back = model.ddim(ahead, secmi_t + secmi_delta, secmi_t, context)
            error = ((back - x) ** 2).mean(dim=(1, 2, 3))
        else:
            eps0 = model.epsilon(x0, 0, context)
            a = model.alphas[pia_t]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps0
            error = ((model.epsilon(xt, pia_t, context) - eps0).abs() ** 4).mean(dim=(1, 2, 3))
        scores.append(-error.cpu().numpy())
    return np.concatenate(scores)
