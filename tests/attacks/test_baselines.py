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
from diffmia.errors import ConfigError, DataError
from diffmia.lab.finetune import load_pipeline
from diffmia.queries import query_seed


def _image(values):
    return Image.fromarray(np.asarray(values, dtype=np.uint8).reshape(2, 2, 1).repeat(3, axis=2))


def test_nearest_generation_by_hand():
    a, b, c = _image([0, 0, 0, 0]), _image([255, 255, 0, 0]), _image([255, 0, 0, 0])
    scores = nearest_generation_scores([a, b], [c, a], PixelEncoder(2))
    # a is itself a generation (distance 0); b's nearest is c: one pixel of three channels differs by 1.0
    np.testing.assert_allclose(scores, [0.0, -np.sqrt(3.0)], atol=1e-6)


class _TableEncoder:
    """Embeds the image whose top-left red value is i as row i of a fixed table (any dtype)."""

    fingerprint = "table"

    def __init__(self, table) -> None:
        self.table = table

    def encode(self, images):
        return self.table[[int(np.asarray(im)[0, 0, 0]) for im in images]]


def _indexed(i):
    return Image.new("RGB", (2, 2), (i, 0, 0))


def test_nearest_generation_equals_a_brute_force_minimum():
    """Real-valued embeddings of several shapes (tokens flattened): minus the smallest Euclidean distance."""
    table = np.random.default_rng(4).normal(size=(9, 3, 5)) * [[[1.0], [4.0], [0.5]]]
    scores = nearest_generation_scores(
        [_indexed(i) for i in range(4)], [_indexed(i) for i in range(4, 9)], _TableEncoder(table)
    )
    flat = table.reshape(9, -1)
    expected = [-min(np.linalg.norm(flat[i] - flat[j]) for j in range(4, 9)) for i in range(4)]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_nearest_generation_is_computed_in_float64():
    """float32 embeddings 10000 and 10001, 1 apart: 10001^2 has no float32 form, so a square norm taken in float32
    cancels the expanded distance to 0; in float64 it is 1. Either side may be the candidate."""
    table = np.array([[10000.0, 0.0], [10001.0, 0.0]], dtype=np.float32)
    for candidate, generation in ((0, 1), (1, 0)):
        scores = nearest_generation_scores([_indexed(candidate)], [_indexed(generation)], _TableEncoder(table))
        assert scores.dtype == np.float64
        np.testing.assert_array_equal(scores, [-1.0])


@pytest.mark.parametrize(("n_candidates", "n_generations"), [(0, 2), (2, 0), (0, 0)])
def test_nearest_generation_needs_both_sets(n_candidates, n_generations):
    encoder = _TableEncoder(np.zeros((1, 2)))
    message = f"need candidates and generations, got {n_candidates} and {n_generations}"
    with pytest.raises(DataError, match=f"^{message}$"):
        nearest_generation_scores([_indexed(0)] * n_candidates, [_indexed(0)] * n_generations, encoder)


def test_gan_leaks_queries_are_caption_free_and_seeded():
    settings = GenerationConfig(steps=7, guidance=2.0, negative_prompt="blurry", seed=11)
    queries = gan_leaks_queries(5, settings)
    assert [q.prompt for q in queries] == [""] * 5 and {q.steps for q in queries} == {7}
    assert {q.guidance for q in queries} == {2.0} and {q.negative_prompt for q in queries} == {"blurry"}
    assert [q.seed for q in queries] == [query_seed(11, "gan-leaks", "text2img", i) for i in range(5)]
    assert all(q.init_image is None for q in queries)
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
    expected = np.mean(
        [float((torch.randn((4, 8, 8), generator=generator, dtype=torch.float64) ** 2).mean()) for _ in range(4)]
    )
    np.testing.assert_allclose(graybox_scores(silent_pipe, images, prompts, "loss"), -expected, rtol=1e-12)
    # images of another size are read at the model's resolution
    mixed = [images[0].resize((48, 48)), images[1].resize((20, 20))]
    np.testing.assert_allclose(graybox_scores(silent_pipe, mixed, prompts[:2], "secmi"), 0.0, atol=1e-12)


def test_graybox_bad_arguments(silent_pipe):
    image = [Image.new("RGB", (32, 32))]
    with pytest.raises(ConfigError, match=r"^unknown gray-box attack 'lira'; valid: loss, secmi, pia$"):
        graybox_scores(silent_pipe, image, ["x"], "lira")
    with pytest.raises(ConfigError, match="timestep 1010 is beyond the schedule's 1000 steps"):
        graybox_scores(silent_pipe, image, ["x"], "secmi", secmi_t=1000)
    with pytest.raises(ConfigError, match="1 images but 2 prompts"):
        graybox_scores(silent_pipe, image, ["x", "y"], "pia")


def test_graybox_baselines_need_weights():
    settings = {
        "audit": {"scenarios": ["III"], "baselines": ["gan-leaks", "secmi"]},
        "target": {"kind": "http", "url": "http://127.0.0.1:9/"},
    }
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
    """Outputs 0.3 x - 0.8 t / T + 0.5 mean(context) as a diffusers UNet does: in an output's ``.sample``.

    Like a real UNet it refuses input of another dtype than its weights', and it records its batch sizes.
    """

    def __init__(self, dtype=torch.float64, timesteps=_T) -> None:
        super().__init__()
        self.config, self.dtype, self.timesteps, self.batches = SimpleNamespace(sample_size=2), dtype, timesteps, []

    def forward(self, x, t, encoder_hidden_states):
        if x.dtype != self.dtype:
            raise RuntimeError(f"Input type ({x.dtype}) and weight type ({self.dtype}) should be the same")
        self.batches.append(len(x))
        t = torch.as_tensor(t, dtype=x.dtype).expand(len(x))
        shift = _B * t / self.timesteps + _C * encoder_hidden_states.to(x.dtype).mean(dim=(1, 2))
        return UNet2DConditionOutput(sample=_A * x + shift[:, None, None, None])


class _LengthTokenizer:
    """Tokenises a prompt as its length, repeated to the padded length."""

    model_max_length = 3

    def __call__(self, prompts, *, max_length, return_tensors, **_):
        return SimpleNamespace(input_ids=torch.tensor([[len(p)] * max_length for p in prompts]))


class StableDiffusionPipeline(SimpleNamespace):
    """Stands in for diffusers' class of this name: the family (:mod:`diffmia.families`) is read from the class."""


def _stub_pipe(prediction: str, dtype=torch.float64, timesteps=_T) -> SimpleNamespace:
    """The pieces of a StableDiffusionPipeline the gray-box attacks read, small enough to follow by hand."""
    scheduler = DDIMScheduler(
        num_train_timesteps=timesteps,
        beta_start=0.001,
        beta_end=0.05,
        beta_schedule="linear",
        prediction_type=prediction,
    )
    posterior = lambda pixels: SimpleNamespace(mean=F.avg_pool2d(pixels, 2), sample=lambda generator=None: pixels)  # noqa: E731
    vae = SimpleNamespace(
        dtype=dtype,
        config=SimpleNamespace(scaling_factor=_SCALE),
        encode=lambda pixels: SimpleNamespace(latent_dist=posterior(pixels)),
    )
    embed = lambda ids: (ids[..., None].to(dtype) / 8,)  # noqa: E731  # (batch, tokens, 1) like CLIP's
    return StableDiffusionPipeline(
        unet=_AffineUNet(dtype, timesteps),
        scheduler=scheduler,
        vae=vae,
        vae_scale_factor=2,
        image_processor=VaeImageProcessor(vae_scale_factor=2),
        device=torch.device("cpu"),
        tokenizer=_LengthTokenizer(),
        text_encoder=embed,
    )


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
    scores = graybox_scores(
        _stub_pipe(prediction), _IMAGES, _PROMPTS, "secmi", secmi_t=t, secmi_delta=delta, batch_size=2
    )
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
    scores = graybox_scores(
        _stub_pipe(prediction), _IMAGES, _PROMPTS, "loss", loss_timesteps=(3, 17, 30), seed=5, batch_size=2
    )
    np.testing.assert_allclose(scores, -np.mean(errors, axis=0), rtol=1e-9, atol=0)


def test_graybox_refuses_other_predictions():
    """A model predicting the clean sample has no noise error to read: refused by name."""
    pipe = _stub_pipe("epsilon")
    pipe.scheduler = DDIMScheduler(num_train_timesteps=_T, prediction_type="sample")
    with pytest.raises(ConfigError, match="need an epsilon or v prediction model, got 'sample'"):
        graybox_scores(pipe, _IMAGES, _PROMPTS, "pia")


@pytest.mark.parametrize("attack", ["loss", "secmi", "pia"])
def test_graybox_defaults_are_the_papers_timesteps(attack):
    """On a 1,000-step schedule the defaults are loss at 100/200/300/400, SecMI t = 100 and delta 10, PIA t = 200,
    noise seed 0, and batches of 64 (70 images: one full batch and one of 6)."""
    images, prompts = (_IMAGES * 24)[:70], (_PROMPTS * 24)[:70]
    explicit = _stub_pipe("epsilon", timesteps=1000)
    expected = graybox_scores(
        explicit,
        images,
        prompts,
        attack,
        loss_timesteps=(100, 200, 300, 400),
        secmi_t=100,
        secmi_delta=10,
        pia_t=200,
        seed=0,
        batch_size=64,
    )
    pipe = _stub_pipe("epsilon", timesteps=1000)
    np.testing.assert_array_equal(graybox_scores(pipe, images, prompts, attack), expected)
    assert sorted(set(pipe.unet.batches)) == [6, 64] and pipe.unet.batches == explicit.unet.batches


def test_graybox_timesteps_must_lie_inside_the_schedule():
    """The last usable step of a T-step schedule is T - 1."""
    pipe = _stub_pipe("epsilon")
    with pytest.raises(ConfigError, match=f"^pia: timestep {_T} is beyond the schedule's {_T} steps$"):
        graybox_scores(pipe, _IMAGES, _PROMPTS, "pia", pia_t=_T)
    with pytest.raises(ConfigError, match=f"^loss: timestep {_T} is beyond"):
        graybox_scores(pipe, _IMAGES, _PROMPTS, "loss", loss_timesteps=(1, _T))
    assert np.isfinite(graybox_scores(pipe, _IMAGES, _PROMPTS, "pia", pia_t=_T - 1)).all()
    assert np.isfinite(graybox_scores(pipe, _IMAGES, _PROMPTS, "secmi", secmi_t=_T - 5, secmi_delta=4)).all()


@pytest.mark.parametrize("attack", ["loss", "secmi", "pia"])
def test_graybox_reads_images_at_the_models_resolution(attack):
    """An image of another size is resized (Lanczos, the image processor's default) to the model's 4 x 4 first."""
    large = [im.resize((8, 8), Image.Resampling.NEAREST) for im in _IMAGES]
    mixed = [large[0], _IMAGES[1], large[2].resize((6, 10))]
    expected = graybox_scores(
        _stub_pipe("epsilon"),
        [im.resize((4, 4), Image.Resampling.LANCZOS) for im in mixed],
        _PROMPTS,
        attack,
        secmi_t=8,
        pia_t=9,
        loss_timesteps=(3, 9),
    )
    scores = graybox_scores(_stub_pipe("epsilon"), mixed, _PROMPTS, attack, secmi_t=8, pia_t=9, loss_timesteps=(3, 9))
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


@pytest.mark.parametrize("attack", ["loss", "secmi", "pia"])
def test_a_float32_pipeline_is_fed_float32_and_scored_in_float64(attack):
    """A float32 UNet gets float32 input (a real one refuses float64); the scores equal the float64 model's to its
    precision and come back in float64."""
    settings = dict(secmi_t=8, pia_t=9, loss_timesteps=(3, 9))
    scores = graybox_scores(_stub_pipe("v_prediction", torch.float32), _IMAGES, _PROMPTS, attack, **settings)
    exact = graybox_scores(_stub_pipe("v_prediction"), _IMAGES, _PROMPTS, attack, **settings)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, exact, rtol=1e-4)


def test_graybox_prompts_are_padded_and_truncated_to_the_tokenizers_length():
    """The shipped CLIP tokenizer (32 tokens): a short prompt is padded, a long one cut, both to 32 ids."""
    from transformers import AutoTokenizer

    from diffmia.assets import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(f"{resolve_model('builtin')}/tokenizer")
    pipe, seen = _stub_pipe("epsilon"), []
    pipe.tokenizer = tokenizer
    pipe.text_encoder = lambda ids: (seen.append(ids), (ids[..., None].to(torch.float64) / 8,))[1]
    prompts = ["a one", " ".join(["seven"] * 50), "two"]
    graybox_scores(pipe, _IMAGES, prompts, "pia", pia_t=9)
    (ids,) = seen
    expected = tokenizer(prompts, padding="max_length", max_length=32, truncation=True).input_ids
    assert ids.shape == (3, 32) and ids.tolist() == expected
    assert ids[1, -1] == tokenizer.eos_token_id and ids[0, -1] == tokenizer.pad_token_id
