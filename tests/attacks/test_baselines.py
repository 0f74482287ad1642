"""Shadow-free baselines: GAN-Leaks nearest generation; gray-box loss, SecMI and PIA on hand-checkable models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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
