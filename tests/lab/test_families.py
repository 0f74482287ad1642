"""Model families (``diffmia.families``) on tiny real pipelines of each: conditioning as the pipeline's own,
fine-tunes full and LoRA, LoRA files (diffusers folder, kohya single file) and gray-box loss, per family."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from diffmia.attacks.baselines import graybox_scores
from diffmia.config import FinetuneConfig, PrivacyConfig
from diffmia.data import load_image_folder
from diffmia.errors import ConfigError
from diffmia.families import Conditioning, condition, family_of, family_of_class
from diffmia.lab.data import digits_records
from diffmia.lab.finetune import _add_lora, _save_lora, finetune, load_pipeline
from diffmia.lab.pipeline import build_pipeline
from diffmia.lab.seeding import step_rng, torch_generator
from diffmia.lab.training import TrainImages, denoising_loss, epoch_batches, to_tensor
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget
from sizes import TINY

FAMILIES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
PROMPTS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]
RECIPE = {"batch_size": 8, "checkpoint_every": 0, "max_steps": 2}


@pytest.fixture(scope="module")
def bases(tmp_path_factory, digit_folder):
    """A tiny base of each family (the same sizes and tokenizer), saved, and eight captioned digits."""
    root = tmp_path_factory.mktemp("families")
    captions = [r["caption"] for r in digits_records()[1]] + PROMPTS
    for family in FAMILIES:
        build_pipeline(captions, TINY, seed=0, family=family).save_pretrained(root / family)
    return {"root": root, "members": digit_folder(root / "members", 8)}


def _fed_to_unet(pipe, prompts) -> Conditioning:
    """What the pipeline itself passes its UNet when it generates from ``prompts`` without guidance."""
    seen = []
    forward = pipe.unet.forward

    def record(x, t, encoder_hidden_states, **kwargs):
        seen.append((encoder_hidden_states, kwargs))
        return forward(x, t, encoder_hidden_states, **kwargs)

    pipe.unet.forward = record
    try:
        pipe(list(prompts), num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    finally:
        pipe.unet.forward = forward
    hidden, kwargs = seen[0]
    return Conditioning(hidden, kwargs.get("added_cond_kwargs"))


def _images(target: DiffusersTarget, queries: list[Query], inits=None) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in target.generate(queries, inits)])


def test_families_are_read_from_the_pipeline_class():
    assert family_of_class("StableDiffusionXLImg2ImgPipeline").text_encoders == ("text_encoder", "text_encoder_2")
    assert family_of_class("StableDiffusionImg2ImgPipeline").name == "sd"
    with pytest.raises(ConfigError, match=r"sdxl \(StableDiffusionXLPipeline\); this model is a FluxPipeline$"):
        family_of_class("FluxPipeline")
    with pytest.raises(ConfigError, match=r"this model is a pipeline of unknown class$"):
        family_of_class(None)
    with pytest.raises(ConfigError, match=r"unknown model family 'flux' \(valid: sd, sdxl\)"):
        build_pipeline(PROMPTS, TINY, family="flux")


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_and_graybox_loss_are_what_the_pipeline_feeds_its_unet(bases, family):
    """The conditioning the fine-tune and the gray-box attacks compute equals what the family's own pipeline passes
    its UNet when it generates (hidden states, and for SDXL the pooled text and size ids); the gray-box loss is the
    UNet's error under exactly that conditioning, by hand."""
    pipe = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
    assert type(pipe).__name__ == FAMILIES[family] and family_of(pipe).name == family
    fed, context = _fed_to_unet(pipe, PROMPTS), condition(pipe, PROMPTS, 16, "cpu")
    torch.testing.assert_close(context.embeds, fed.embeds, rtol=0, atol=0)
    if family == "sd":
        assert context.added is None and fed.added is None
    else:
        assert context.embeds.shape == (2, 16, 64)  # both encoders' 32 features side by side
        assert context.added.keys() == fed.added.keys() == {"text_embeds", "time_ids"}
        for key, value in fed.added.items():
            torch.testing.assert_close(context.added[key], value, rtol=0, atol=0)
        assert context.added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    # gray-box loss at one timestep, by hand with the pipeline's conditioning
    images = [Image.open(p).convert("RGB") for p in sorted((bases["members"] / "images").iterdir())[:2]]
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(images, height=16, width=16)
        x0 = pipe.vae.encode(pixels).latent_dist.mean.double() * pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        a = pipe.scheduler.alphas_cumprod.double()[500]
        xt = (a.sqrt() * x0 + (1 - a).sqrt() * noise).float()
        eps = fed.predict(pipe.unet, xt, torch.full((2,), 500)).double()
    expected = -((eps - noise) ** 2).mean(dim=(1, 2, 3)).numpy()
    scores = graybox_scores(pipe, images, PROMPTS, "loss", loss_timesteps=(500,))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_fine_tunes_of_each_family_generate_seeded_and_batch_independent(bases, family, tmp_path):
    """Full and LoRA fine-tunes of each family's base: the card names the family; both change text-to-image and
    image-to-image generations; a query gives the same image alone, repeated or in a batch."""
    base, members = bases["root"] / family, bases["members"]
    recipes = {"full": FinetuneConfig(learning_rate=1e-3, **RECIPE),
               "lora": FinetuneConfig(method="lora", lora_rank=2, learning_rate=1e-2, **RECIPE)}  # fmt: skip
    full, lora = (finetune(base, members, tmp_path / k, r, show_progress=False) for k, r in recipes.items())
    for out, method in ((full, "full"), (lora, "lora")):
        card = json.loads((out / "card.json").read_text())
        assert (card["family"], card["method"], card["steps"]) == (family, method, 2)
    assert load_pipeline(full / "pipeline").__class__.__name__ == FAMILIES[family]
    init = Image.open(sorted((members / "images").iterdir())[0]).convert("RGB")
    text = [Query(PROMPTS[i % 2], seed=10 + i, steps=3, guidance=2.0) for i in range(3)]
    image = [Query(PROMPTS[0], seed=20 + i, steps=4, guidance=2.0, strength=0.5) for i in range(2)]
    targets = {"base": DiffusersTarget(base, dtype="float64", batch_size=8),
               "full": DiffusersTarget(full / "pipeline", dtype="float64", batch_size=8),
               "lora": DiffusersTarget(base, lora=lora / "lora", dtype="float64", batch_size=8)}  # fmt: skip
    made = {}
    for name, target in targets.items():
        made[name] = (_images(target, text), _images(target, image, [init] * 2))
        np.testing.assert_array_equal(_images(target, text[1:2]), made[name][0][1:2])  # alone = in a batch
        np.testing.assert_array_equal(_images(target, image[1:], [init]), made[name][1][1:])
    for name in ("full", "lora"):
        for tuned, untouched in zip(made[name], made["base"], strict=True):
            assert np.abs(tuned - untouched).max() >= 1  # the fine-tune acts on both channels


@pytest.mark.parametrize("family", FAMILIES)
def test_the_first_fine_tuning_loss_is_the_unets_error_under_the_pipelines_conditioning(bases, family, tmp_path):
    """One step over the eight images: the loss the card records equals the denoising loss of the same draws with
    the conditioning the pipeline itself would use for the captions (for SDXL: the size ids of 16 px images)."""
    from diffusers import DDPMScheduler

    base, members = bases["root"] / family, bases["members"]
    out = finetune(base, members, tmp_path / "one", FinetuneConfig(max_steps=1, batch_size=8, checkpoint_every=0),
                   show_progress=False)  # fmt: skip
    recorded = json.loads((out / "card.json").read_text())["final_loss"]
    pipe = DiffusionPipeline.from_pretrained(base, local_files_only=True)
    data = TrainImages.from_samples(load_image_folder(members).samples, 16)
    index = epoch_batches(8, 8, 0, 0)  # the recipe's seed 0, the first micro-batch
    context = _fed_to_unet(pipe, [data.captions[i] for i in index])
    with torch.no_grad():
        posterior = pipe.vae.encode(to_tensor(data.batch(index, np.random.default_rng(0)))).latent_dist
        expected = denoising_loss(pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config), posterior.mean,
                                  posterior.std, pipe.vae.config.scaling_factor, context,
                                  torch_generator(step_rng(0, 0, 0)))  # fmt: skip
    assert recorded == pytest.approx(float(expected), rel=1e-5)


def test_dp_sgd_trains_an_sdxl_lora(bases, tmp_path):
    """Opacus's per-sample gradients reach SDXL's added conditioning: a DP-SGD LoRA fine-tune runs and accounts."""
    recipe = FinetuneConfig(
        method="lora", lora_rank=2, dp=PrivacyConfig(noise_multiplier=1.0), **(RECIPE | {"batch_size": 4})
    )
    out = finetune(bases["root"] / "sdxl", bases["members"], tmp_path / "dp", recipe, show_progress=False)
    card = json.loads((out / "card.json").read_text())
    assert card["family"] == "sdxl" and card["privacy"]["epsilon"] > 0
    weights = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora.up" in k) > 0


def _kohya(diffusers_file, out, rank):
    """The LoRA file in kohya's key layout: ``lora_unet_<module path with underscores>.lora_down/up.weight`` and
    an ``alpha`` per module (alpha = rank: scale 1, as the diffusers file has)."""
    converted = {}
    for key, value in load_file(diffusers_file).items():
        module, kind = key.removeprefix("unet.").split(".lora.")
        name = "lora_unet_" + module.replace(".", "_")
        converted[f"{name}.lora_{kind.removesuffix('.weight')}.weight"] = value
        converted[f"{name}.alpha"] = torch.tensor(float(rank))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, out)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_files_round_trip_in_the_diffusers_and_kohya_layouts(bases, family, tmp_path):
    """Adapters saved in the family's diffusers layout load back (stock ``load_lora_weights``) to the in-memory
    model's outputs; the same weights as one kohya-layout file in a downloads folder give a target the same images,
    and its fingerprint hashes that file alone."""
    pipe = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        _add_lora(pipe.unet, FinetuneConfig(method="lora", lora_rank=2))
        with torch.no_grad():
            for name, parameter in pipe.unet.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.2)  # a trained adapter's B is not zero
    _save_lora(pipe, pipe.unet, tmp_path / "lora")
    context = condition(pipe, PROMPTS, 16, "cpu")
    x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        in_memory = context.predict(pipe.unet, x, torch.tensor([300, 700]))
        loaded = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
        plain = context.predict(loaded.unet, x, torch.tensor([300, 700]))
        loaded.load_lora_weights(tmp_path / "lora")
        torch.testing.assert_close(context.predict(loaded.unet, x, torch.tensor([300, 700])), in_memory)
    assert (in_memory - plain).abs().max() > 1e-3  # the adapters act
    downloads = tmp_path / "downloads"
    kohya = _kohya(tmp_path / "lora" / "pytorch_lora_weights.safetensors", downloads / "style.safetensors", 2)
    (downloads / "other.safetensors").write_bytes(b"unrelated")
    (tmp_path / "elsewhere").mkdir()
    queries = [Query(PROMPTS[0], seed=4, steps=3, guidance=2.0)]
    folder = DiffusersTarget(bases["root"] / family, lora=tmp_path / "lora", dtype="float64")
    single = DiffusersTarget(bases["root"] / family, lora=kohya, dtype="float64")
    np.testing.assert_array_equal(_images(single, queries), _images(folder, queries))
    base = DiffusersTarget(bases["root"] / family, dtype="float64")
    assert np.abs(_images(single, queries) - _images(base, queries)).max() >= 1
    # the file alone: a copy elsewhere keeps the fingerprint, a sibling's change does not move it
    fingerprint = single.fingerprint
    copy = shutil.copy(kohya, tmp_path / "elsewhere" / "style.safetensors")
    assert DiffusersTarget(bases["root"] / family, lora=copy, dtype="float64").fingerprint == fingerprint
    (downloads / "other.safetensors").write_bytes(b"changed")
    assert DiffusersTarget(bases["root"] / family, lora=kohya, dtype="float64").fingerprint == fingerprint
    other = _kohya(tmp_path / "lora" / "pytorch_lora_weights.safetensors", tmp_path / "other" / "style.safetensors", 4)
    assert DiffusersTarget(bases["root"] / family, lora=other, dtype="float64").fingerprint != fingerprint


def test_pretrain_command_builds_an_sdxl_base_and_trains_both_text_encoders(digit_folder, tmp_path):
    """`diffmia lab pretrain --family sdxl`: an SDXL pipeline whose UNet and both text encoders trained (they
    differ from the same seed's fresh build), its card naming the family; a fine-tune then reads it as SDXL."""
    from safetensors.torch import load_file as weights

    from diffmia.cli import main
    from diffmia.lab.pipeline import TinySDConfig

    data = digit_folder(tmp_path / "data", 8)
    sizes = ["--vae-channels", "16,32", "--unet-channels", "16,32", "--unet-layers", "1", "--text-width", "32",
             "--text-layers", "1"]  # fmt: skip
    args = ["lab", "pretrain", str(data), str(tmp_path / "base"), "--split", "all", "--vae-steps", "1"]
    assert main([*args, "--unet-steps", "2", "--family", "sdxl", *sizes]) == 0
    card = json.loads((tmp_path / "base" / "card.json").read_text())
    assert (card["family"], card["unet"]["steps"]) == ("sdxl", 2) and "--family sdxl" in card["command"]
    pipeline = tmp_path / "base" / "pipeline"
    assert json.loads((pipeline / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    fresh = build_pipeline([s.caption or "" for s in load_image_folder(data).samples], TinySDConfig(
        vae_channels=(16, 32), unet_channels=(16, 32), unet_layers_per_block=1, text_width=32, text_layers=1), seed=0,
        family="sdxl")  # fmt: skip
    for part in ("text_encoder", "text_encoder_2", "unet"):
        (file,) = (pipeline / part).glob("*.safetensors")
        trained, initial = weights(file), getattr(fresh, part).state_dict()
        assert any(not torch.equal(trained[k], initial[k]) for k in trained), part
    tuned = finetune(pipeline, data, tmp_path / "tuned", FinetuneConfig(**RECIPE), show_progress=False)
    assert json.loads((tuned / "card.json").read_text())["family"] == "sdxl"
    assert main([*args[:3], str(tmp_path / "other"), "--family", "flux"]) == 2
