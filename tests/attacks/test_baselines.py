"""Shadow-free baselines: GAN-Leaks nearest generation; gray-box loss, SecMI and PIA on hand-checkable models."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from PIL import Image

from diffmia.attacks.baselines import gan_leaks_queries, graybox_scores, nearest_generation_scores
from diffmia.config import GenerationConfig, parse_config
from diffmia.encoders import PixelEncoder
from diffmia.errors import ConfigError
from diffmia.lab.finetune import load_pipeline


def _image(values):
    return Image.fromarray(np.asarray(values, dtype=np.uint8).reshape(2, 2, 1).repeat(3, axis=2))


def test_nearest_generation_by_hand():
    a, b, c = _image([0, 0, 0, 0]), _image([255, 255, 0, 0]), _image([255, 0, 0, 0])
    scores = nearest_generation_scores([a, b], [c, a], PixelEncoder(2))
    # a is itself a generation (distance 0); b's nearest is c: one pixel of three channels differs by 1.0
    np.testing.assert_allclose(scores, [0.0, -np.sqrt(3.0)], atol=1e-6)


def test_gan_leaks_queries_are_caption_free_and_seeded():
    settings = GenerationConfig(steps=7, guidance=2.0)
    queries = gan_leaks_queries(5, settings)
    assert [q.prompt for q in queries] == [""] * 5 and {q.steps for q in queries} == {7}
    assert len({q.seed for q in queries}) == 5
    assert [q.seed for q in gan_leaks_queries(5, settings)] == [q.seed for q in queries]
    assert [q.seed for q in gan_leaks_queries(5, GenerationConfig(seed=1))] != [q.seed for q in queries]


@pytest.fixture(scope="module")
def silent_pipe():
    """The shipped tiny pipeline with its UNet's output layer zeroed: it predicts zero noise everywhere."""
    pipe = load_pipeline("builtin")
    with torch.no_grad():
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.zero_()
    return pipe


@pytest.mark.slow
def test_graybox_errors_by_hand_on_a_model_that_predicts_no_noise(silent_pipe):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["a handwritten one"] * 3
    # with eps = 0 every DDIM map is x_s = sqrt(a_s / a_t) x_t: inverting to t and stepping there and back is exact
    np.testing.assert_allclose(graybox_scores(silent_pipe, images, prompts, "secmi"), 0.0, atol=1e-12)
    # PIA: eps_0 = 0 and the prediction at t is 0 as well
    np.testing.assert_allclose(graybox_scores(silent_pipe, images, prompts, "pia"), 0.0, atol=1e-12)
    # loss: the error is the seeded noise itself, the same for every image: mean over timesteps of mean(noise^2)
    generator = torch.Generator().manual_seed(0)
    expected = np.mean([float((torch.randn((4, 8, 8), generator=generator, dtype=torch.float64) ** 2).mean())
                        for _ in range(4)])  # fmt: skip
    np.testing.assert_allclose(graybox_scores(silent_pipe, images, prompts, "loss"), -expected, rtol=1e-12)
    # images of another size are read at the model's resolution
    mixed = [images[0].resize((48, 48)), images[1].resize((20, 20))]
    np.testing.assert_allclose(graybox_scores(silent_pipe, mixed, prompts[:2], "secmi"), 0.0, atol=1e-12)


def test_graybox_bad_arguments(silent_pipe):
    image = [Image.new("RGB", (32, 32))]
    with pytest.raises(ConfigError, match="unknown gray-box attack 'lira'"):
        graybox_scores(silent_pipe, image, ["x"], "lira")
    with pytest.raises(ConfigError, match="timestep 1010 is beyond the schedule's 1000 steps"):
        graybox_scores(silent_pipe, image, ["x"], "secmi", secmi_t=1000)
    with pytest.raises(ConfigError, match="1 images but 2 prompts"):
        graybox_scores(silent_pipe, image, ["x", "y"], "pia")


def test_graybox_baselines_need_weights():
    settings = {"audit": {"scenarios": ["III"], "baselines": ["gan-leaks", "secmi"]},
                "target": {"kind": "http", "url": "http://127.0.0.1:9/"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"audit\.baselines secmi read the target's weights, which an http target"):
        parse_config(settings)
    settings["audit"]["finetune_target"] = True  # a target fine-tuned here is local
    assert parse_config(settings).audit.baselines == ["gan-leaks", "secmi"]


# --- gray-box scores against a hand derivation: stock DDIM scheduler and image processor, stub networks -------------
# The stub UNet outputs f(x, t, c) = 0.3 x - 0.8 t / T + 0.5 mean(c): non-zero and dependent on the latent, the step
# and the prompt, read as the noise or as v by the scheduler's prediction type. The VAE's posterior mean is the 2x2
# average of the pixels (scaled by 0.5) and the text encoder embeds a prompt as its length / 8.
_T, _A, _B, _C, _SCALE = 40, 0.3, -0.8, 0.5, 0.5


class _AffineUNet(torch.nn.Module):
    """Outputs 0.3 x - 0.8 t / T + 0.5 mean(context) as a diffusers UNet does: in an output's ``.sample``."""

    def __init__(self) -> None:
        super().__init__()
        self.config, self.dtype = SimpleNamespace(sample_size=2), torch.float64

    def forward(self, x, t, context):
        t = torch.as_tensor(t, dtype=x.dtype).expand(len(x))
        shift = _B * t / _T + _C * context.to(x.dtype).mean(dim=(1, 2))
        return UNet2DConditionOutput(sample=_A * x + shift[:, None, None, None])


class _LengthTokenizer:
    """Tokenises a prompt as its length, repeated to the padded length."""

    model_max_length = 3

    def __call__(self, prompts, *, max_length, return_tensors, **_):
        return SimpleNamespace(input_ids=torch.tensor([[len(p)] * max_length for p in prompts]))


def _stub_pipe(prediction: str) -> SimpleNamespace:
    """The pieces of a StableDiffusionPipeline the gray-box attacks read, small enough to follow by hand."""
    scheduler = DDIMScheduler(num_train_timesteps=_T, beta_start=0.001, beta_end=0.05, beta_schedule="linear",
                              prediction_type=prediction)  # fmt: skip
    posterior = lambda pixels: SimpleNamespace(mean=F.avg_pool2d(pixels, 2), sample=lambda generator=None: pixels)  # noqa: E731
    vae = SimpleNamespace(dtype=torch.float64, config=SimpleNamespace(scaling_factor=_SCALE),
                          encode=lambda pixels: SimpleNamespace(latent_dist=posterior(pixels)))  # fmt: skip
    embed = lambda ids: (ids[..., None].to(torch.float64) / 8,)  # noqa: E731  # (batch, tokens, 1) like CLIP's
    return SimpleNamespace(unet=_AffineUNet(), scheduler=scheduler, vae=vae, vae_scale_factor=2,
                           image_processor=VaeImageProcessor(vae_scale_factor=2), device=torch.device("cpu"),
                           tokenizer=_LengthTokenizer(), text_encoder=embed)  # fmt: skip


_PROMPTS = ["a", "two", "three words"]
_IMAGES = [Image.fromarray(a) for a in np.random.default_rng(3).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)]


def _hand_inputs():
    """Latents (the scaled 2x2 pixel means in [-1, 1]), prompt embeddings and the linear schedule's alpha-bars."""
    pixels = np.stack([2.0 * (np.asarray(im).astype(np.float32) / 255.0) - 1.0 for im in _IMAGES]).astype(np.float64)
    x0 = _SCALE * pixels.transpose(0, 3, 1, 2).reshape(3, 3, 2, 2, 2, 2).mean(axis=(3, 5))
    context = np.array([len(p) / 8 for p in _PROMPTS])[:, None, None, None]
    alphas = np.cumprod(1.0 - np.linspace(0.001, 0.05, _T))
    # the scheduler keeps them in float32: the same numbers to 1e-7, and those exact values keep the checks tight
    stock = _stub_pipe("epsilon").scheduler.alphas_cumprod.to(torch.float64).numpy()
    np.testing.assert_allclose(stock, alphas, rtol=1e-6)
    return x0, context, stock


def _hand_eps(x, t, context, alphas, prediction):
    """The noise the stub predicts; for v: x0 = sqrt(a) x - sqrt(1 - a) v, eps = (x - sqrt(a) x0) / sqrt(1 - a)."""
    out = _A * x + _B * t / _T + _C * context
    if prediction == "epsilon":
        return out
    a = alphas[t]
    x0 = np.sqrt(a) * x - np.sqrt(1 - a) * out
    return (x - np.sqrt(a) * x0) / np.sqrt(1 - a)


def _hand_ddim(x, t, s, context, alphas, prediction):
    """DDIM from step t to s: x_s = r x_t + (sqrt(1 - a_s) - r sqrt(1 - a_t)) eps with r = sqrt(a_s / a_t)."""
    r = np.sqrt(alphas[s] / alphas[t])
    eps = _hand_eps(x, t, context, alphas, prediction)
    return r * x + (np.sqrt(1 - alphas[s]) - r * np.sqrt(1 - alphas[t])) * eps


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("t", "delta", "path"), [(12, 4, [0, 4, 8, 12]), (10, 4, [0, 4, 8, 10])], ids=["even", "odd"])
def test_secmi_by_hand(prediction, t, delta, path):
    """SecMI: DDIM-invert 0 -> t along ``path`` (a short last step where delta does not divide t), step to t + delta,
    denoise back to t; score = -mean squared gap."""
    x0, context, alphas = _hand_inputs()
    x = x0
    for start, stop in itertools.pairwise(path):
        x = _hand_ddim(x, start, stop, context, alphas, prediction)
    ahead = _hand_ddim(x, t, t + delta, context, alphas, prediction)
    back = _hand_ddim(ahead, t + delta, t, context, alphas, prediction)
    expected = -((back - x) ** 2).mean(axis=(1, 2, 3))
    scores = graybox_scores(_stub_pipe(prediction), _IMAGES, _PROMPTS, "secmi", secmi_t=t, secmi_delta=delta,
                            batch_size=2)  # fmt: skip
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_pia_by_hand(prediction):
    """PIA: eps0 = prediction at step 0, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps0; score -mean |eps(x_t, t) - eps0|^4."""
    x0, context, alphas = _hand_inputs()
    eps0 = _hand_eps(x0, 0, context, alphas, prediction)
    xt = np.sqrt(alphas[9]) * x0 + np.sqrt(1 - alphas[9]) * eps0
    expected = -((_hand_eps(xt, 9, context, alphas, prediction) - eps0) ** 4).mean(axis=(1, 2, 3))
    scores = graybox_scores(_stub_pipe(prediction), _IMAGES, _PROMPTS, "pia", pia_t=9, batch_size=2)
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_loss_by_hand(prediction):
    """Loss: seeded noise n_t shared by all images, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) n_t; score -mean squared gap."""
    x0, context, alphas = _hand_inputs()
    generator = torch.Generator().manual_seed(5)
    errors = []
    for t in (3, 17, 30):
        noise = torch.randn((3, 2, 2), generator=generator, dtype=torch.float64).numpy()
        xt = np.sqrt(alphas[t]) * x0 + np.sqrt(1 - alphas[t]) * noise
        errors.append(((_hand_eps(xt, t, context, alphas, prediction) - noise) ** 2).mean(axis=(1, 2, 3)))
    scores = graybox_scores(_stub_pipe(prediction), _IMAGES, _PROMPTS, "loss", loss_timesteps=(3, 17, 30), seed=5,
                            batch_size=2)  # fmt: skip
    np.testing.assert_allclose(scores, -np.mean(errors, axis=0), rtol=1e-9, atol=0)


def test_graybox_refuses_other_predictions():
    """A model predicting the clean sample has no noise error to read: refused by name."""
    pipe = _stub_pipe("epsilon")
    pipe.scheduler = DDIMScheduler(num_train_timesteps=_T, prediction_type="sample")
    with pytest.raises(ConfigError, match="need an epsilon or v prediction model, got 'sample'"):
        graybox_scores(pipe, _IMAGES, _PROMPTS, "pia")
