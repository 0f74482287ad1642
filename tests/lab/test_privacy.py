"""DP-SGD: per-sample gradients, clipping, noise, accounting (against Opacus's own accountant), the fine-tune card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from safetensors.torch import load_file

from diffmia.cli import main
from diffmia.config import FinetuneConfig, PrivacyConfig, parse_config
from diffmia.errors import ConfigError
from diffmia.lab.finetune import _add_lora, finetune, load_pipeline
from diffmia.lab.privacy import PrivacyPlan, make_private, plan_privacy, poisson_batch, seed_noise


@pytest.fixture(scope="module")
def lora_unet():
    """The shipped tiny UNet with rank-4 LoRA adapters (15,616 trainable parameters) and one batch of inputs."""
    unet = load_pipeline("builtin").unet
    unet.requires_grad_(False)
    _add_lora(unet, FinetuneConfig(method="lora"))
    generator = torch.Generator().manual_seed(0)
    for name, p in unet.named_parameters():  # LoRA B starts at zero; make every per-sample gradient non-zero
        if p.requires_grad and "lora_B" in name:
            p.data = 0.1 * torch.randn(p.shape, generator=generator)
    batch = (
        torch.randn(6, 4, 8, 8, generator=generator),
        torch.arange(6) * 150,
        torch.randn(6, 77, 64, generator=generator),
    )
    return unet, batch


def _plan(sigma: float, clip: float, batch: int = 6) -> PrivacyPlan:
    return PrivacyPlan(
        sigma, clip, sample_rate=0.1, expected_batch_size=batch, delta=1e-5, steps=10, target_epsilon=None
    )


def _per_sample_gradients(unet, batch):
    """Each sample's gradient of its own loss, one sample at a time through the plain module."""
    params = [p for p in unet.parameters() if p.requires_grad]
    grads = []
    for i in range(len(batch[0])):
        unet.zero_grad()
        loss = unet(*(x[i : i + 1] for x in batch)).sample.pow(2).mean()
        grads.append(torch.autograd.grad(loss, params))
    return grads


def _step(unet, batch, plan):
    """One DP-SGD backward pass through make_private; returns the private optimizer and the trainable params."""
    optimizer = torch.optim.SGD([p for p in unet.parameters() if p.requires_grad], lr=0.0)
    wrapped, private = make_private(unet, optimizer, plan)
    wrapped(*batch).sample.pow(2).mean().backward()
    return wrapped, private, [p for p in unet.parameters() if p.requires_grad]


def test_every_per_sample_gradient_is_clipped_to_the_norm(lora_unet):
    unet, batch = lora_unet
    reference = _per_sample_gradients(unet, batch)
    norms = [float(torch.sqrt(sum((g**2).sum() for g in grads))) for grads in reference]
    clip = min(norms) / 2  # every sample exceeds the norm, so every one must be scaled to exactly `clip`
    wrapped, private, params = _step(unet, batch, _plan(0.0, clip))
    for p, *per_sample in zip(params, *reference, strict=True):
        expected = torch.stack(per_sample)
        torch.testing.assert_close(p.grad_sample, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    private.clip_and_accumulate()
    for j, p in enumerate(params):
        expected = sum(clip / n * grads[j] for n, grads in zip(norms, reference, strict=True))
        torch.testing.assert_close(p.summed_grad, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    # a norm above every sample's leaves the gradients as they are
    wrapped.remove_hooks()
    wrapped, private, params = _step(unet, batch, _plan(0.0, 2 * max(norms)))
    private.clip_and_accumulate()
    for j, p in enumerate(params):
        expected = sum(grads[j] for grads in reference)
        torch.testing.assert_close(p.summed_grad, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    wrapped.remove_hooks()


def test_noise_has_std_noise_multiplier_times_clip_and_is_seeded(lora_unet):
    unet, batch = lora_unet
    sigma, clip = 1.3, 0.05
    draws = []
    for _ in range(2):
        wrapped, private, params = _step(unet, batch, _plan(sigma, clip))
        private.clip_and_accumulate()
        seed_noise(private, seed=4, step=7)
        private.add_noise()
        draws.append(torch.cat([(p.grad - p.summed_grad).flatten() for p in params]))
        private.scale_grad()
        total = torch.cat([p.grad.flatten() for p in params])
        torch.testing.assert_close(total, torch.cat([(p.summed_grad.flatten()) for p in params]) / 6 + draws[-1] / 6)
        wrapped.remove_hooks()
    noise = draws[0]
    assert noise.numel() == 15_616
    # the sample std of 15,616 normal draws is within 2% of the true std with probability > 0.999
    assert abs(float(noise.std()) / (sigma * clip) - 1) < 0.02
    assert abs(float(noise.mean())) < 4 * sigma * clip / noise.numel() ** 0.5
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)  # the same step draws the same noise


@pytest.mark.slow
def test_reported_epsilon_is_opacus_for_the_same_parameters():
    plan = plan_privacy(PrivacyConfig(epsilon=4.0, delta=1e-5), n_images=100, batch_size=10, steps=50)
    assert plan.sample_rate == 0.1 and plan.expected_batch_size == 10
    accountant = RDPAccountant()
    for _ in range(50):
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=0.1)
    assert plan.epsilon() == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)
    assert plan.epsilon() == pytest.approx(4.0, abs=0.01)  # solved for the target within Opacus's tolerance
    given = plan_privacy(PrivacyConfig(noise_multiplier=0.8), n_images=200, batch_size=20, steps=30)
    accountant = RDPAccountant()
    for _ in range(30):
        accountant.step(noise_multiplier=0.8, sample_rate=0.1)
    assert given.epsilon() == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)
    assert given.epsilon(10) < given.epsilon()  # fewer steps spend less
    assert plan_privacy(PrivacyConfig(epsilon=1.0), 100, 10, 50).noise_multiplier > plan.noise_multiplier


def test_poisson_batches_are_seeded_and_have_the_sampling_rate():
    sizes = [len(poisson_batch(100, 0.3, seed=1, step=t)) for t in range(400)]
    assert abs(np.mean(sizes) - 30) < 3 * (100 * 0.3 * 0.7 / 400) ** 0.5
    np.testing.assert_array_equal(poisson_batch(100, 0.3, 1, 5), poisson_batch(100, 0.3, 1, 5))
    assert not np.array_equal(poisson_batch(100, 0.3, 1, 5), poisson_batch(100, 0.3, 1, 6))
    assert poisson_batch(50, 1e-9, 0, 0).size == 0  # may be empty; the fine-tune then adds noise to zero


def test_privacy_config_errors(tmp_path, digit_folder, capsys):
    with pytest.raises(ConfigError, match=r'method must be "lora" with \[finetune.dp\]: DP-SGD trains'):
        parse_config({"finetune": {"dp": {"epsilon": 1.0}}})
    with pytest.raises(ConfigError, match="give epsilon or noise_multiplier, exactly one"):
        parse_config({"finetune": {"method": "lora", "dp": {}}})
    data = digit_folder(tmp_path / "data", 12)
    assert main(["finetune", "--model", "builtin", "--data", str(data), "--out", str(tmp_path / "o"), "--dp"]) == 2
    assert "--dp needs a privacy budget: --epsilon or --noise-multiplier" in capsys.readouterr().err
    assert (
        main(["finetune", "--model", "builtin", "--data", str(data), "--out", str(tmp_path / "o"), "--epsilon", "2"])
        == 2
    )
    assert "need --dp" in capsys.readouterr().err
    code = main(
        [
            "finetune",
            "--model",
            "builtin",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--dp",
            "--epsilon",
            "4",
            "--batch-size",
            "16",
            "--steps",
            "2",
        ]
    )
    assert code == 2
    assert "batch_size 16 must be below the 12 training images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "card.json").exists()


@pytest.mark.slow
def test_dp_fine_tune_card_and_determinism(tmp_path, digit_folder):
    data = digit_folder(tmp_path / "data", 20)
    recipe = FinetuneConfig(
        method="lora",
        batch_size=5,
        max_steps=3,
        checkpoint_every=0,
        learning_rate=1e-3,
        dp=PrivacyConfig(noise_multiplier=1.1, max_grad_norm=0.5),
    )
    out = [finetune("builtin", data, tmp_path / f"dp{i}", recipe, show_progress=False) for i in range(2)]
    card = json.loads((out[0] / "card.json").read_text())
    privacy = card["privacy"]
    assert (privacy["noise_multiplier"], privacy["max_grad_norm"], privacy["sample_rate"], privacy["steps"]) == (
        1.1,
        0.5,
        0.25,
        3,
    )
    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.25, 3)]
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5))
    assert card["recipe"]["dp"] == {"epsilon": None, "noise_multiplier": 1.1, "delta": 1e-5, "max_grad_norm": 0.5}
    a, b = (load_file(o / "lora" / "pytorch_lora_weights.safetensors") for o in out)
    assert a.keys() == b.keys()
    for name in a:  # seeded Poisson batches and noise: the same fine-tune twice gives the same adapter
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_early_stopping_holds_out_images_and_stops_by_its_rule(tmp_path, digit_folder):
    data = digit_folder(tmp_path / "data", 20)
    recipe = FinetuneConfig(
        method="lora",
        batch_size=6,
        max_steps=60,
        checkpoint_every=0,
        learning_rate=3e-2,
        early_stopping_patience=2,
        validate_every=3,
        dp=PrivacyConfig(noise_multiplier=0.7),
    )
    out = [finetune("builtin", data, tmp_path / f"es{i}", recipe, show_progress=False) for i in range(2)]
    cards = [json.loads((o / "card.json").read_text()) for o in out]
    stop = cards[0]["early_stopping"]
    assert stop == cards[1]["early_stopping"]  # measured and decided the same way twice
    held_out = cards[0]["data"]["held_out_for_early_stopping"]
    assert len(held_out) == 2 and stop["held_out_images"] == 2  # 10% of 20
    history = stop["validation_loss"]
    assert [step for step, _ in history] == list(range(3, stop["stopped_at"] + 1, 3))
    # the rule: stop at the first measurement that is the 2nd in a row without a new best
    best, since = float("inf"), 0
    for step, loss in history:
        best, since = (loss, 0) if loss < best else (best, since + 1)
        if since == 2:
            assert step == stop["stopped_at"]
            break
    else:
        pytest.fail("the recorded losses never met the stopping rule")
    assert stop["stopped_at"] < 60 and cards[0]["steps"] == stop["stopped_at"]
    # DP-SGD spends only the steps taken
    assert cards[0]["privacy"]["steps"] == stop["stopped_at"]
    accountant = RDPAccountant()
    accountant.history = [(0.7, 6 / 18, stop["stopped_at"])]
    assert cards[0]["privacy"]["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5))
