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
from diffmia.lab.training import TrainImages, epoch_batches, to_tensor
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget
from sizes import TINY

FAMILIES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}
FLOW = ("sd3", "flux")  # the families trained by flow matching
PROMPTS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]
RECIPE = {"batch_size": 8, "checkpoint_every": 0, "max_steps": 2}


@pytest.fixture(scope="module")
def bases(tmp_path_factory, digit_folder):
    """A tiny base of each family (the same sizes and tokenizer), saved, and eight captioned digits."""
    root = tmp_path_factory.mktemp("families")
    captions = [r["caption"] for r in digits_records()[1]] + PROMPTS
    for family in FAMILIES:
        pipe = build_pipeline(captions, TINY, seed=0, family=family)
        if family in FLOW:  # as a pretrained SD3 or Flux VAE: latents shifted before they are scaled (0.0609, 0.1159)
            pipe.vae.register_to_config(shift_factor=0.25, scaling_factor=1.5)
        pipe.save_pretrained(root / family)
    return {"root": root, "members": digit_folder(root / "members", 8)}


def _denoiser(pipe):
    return getattr(pipe, family_of(pipe).denoiser)


def _fed_to_unet(pipe, prompts) -> Conditioning:
    """What the pipeline itself passes its denoiser (UNet or transformer) when it generates from ``prompts`` without
    guidance."""
    seen = []
    network = _denoiser(pipe)
    forward = network.forward

    def record(*args, **kwargs):
        seen.append(kwargs)
        return forward(*args, **kwargs)

    network.forward = record
    try:
        pipe(list(prompts), num_inference_steps=1, guidance_scale=1.0, output_type="latent", height=16, width=16)
    finally:
        network.forward = forward
    kwargs = seen[0]
    return Conditioning(
        kwargs["encoder_hidden_states"],
        kwargs.get("added_cond_kwargs"),
        kwargs.get("pooled_projections"),
        family_of(pipe).name,
    )


def _images(target: DiffusersTarget, queries: list[Query], inits=None) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in target.generate(queries, inits)])


def test_families_are_read_from_the_pipeline_class():
    assert family_of_class("StableDiffusionXLImg2ImgPipeline").text_encoders == ("text_encoder", "text_encoder_2")
    assert family_of_class("StableDiffusionImg2ImgPipeline").name == "sd"
    assert family_of_class("StableDiffusion3Img2ImgPipeline").objective == "flow"
    flux = family_of_class("FluxImg2ImgPipeline")
    assert (flux.name, flux.denoiser, flux.lengths) == ("flux", "transformer", (None, 512))
    with pytest.raises(ConfigError, match=r"flux \(FluxPipeline\); this model is a PixArtAlphaPipeline$"):
        family_of_class("PixArtAlphaPipeline")
    with pytest.raises(ConfigError, match=r"this model is a pipeline of unknown class$"):
        family_of_class(None)
    with pytest.raises(ConfigError, match=r"unknown model family 'pixart' \(valid: sd, sdxl, sd3, flux\)"):
        build_pipeline(PROMPTS, TINY, family="pixart")


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_and_graybox_loss_are_what_the_pipeline_feeds_its_unet(bases, family):
    """The conditioning the fine-tune and the gray-box attacks compute equals what the family's own pipeline passes
    its denoiser when it generates (hidden states; SDXL's pooled text and size ids; SD3's CLIP and T5 states and
    pooled projections); the gray-box loss is the denoiser's error under exactly that conditioning, by hand."""
    pipe = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
    assert type(pipe).__name__ == FAMILIES[family] and family_of(pipe).name == family
    fed, context = _fed_to_unet(pipe, PROMPTS), condition(pipe, PROMPTS, 16, "cpu")
    torch.testing.assert_close(context.embeds, fed.embeds, rtol=0, atol=0)
    if family == "sd":
        assert context.added is None is fed.added and context.pooled is None is fed.pooled
    elif family == "sdxl":
        assert context.embeds.shape == (2, 16, 64)  # both encoders' 32 features side by side
        assert context.added.keys() == fed.added.keys() == {"text_embeds", "time_ids"}
        for key, value in fed.added.items():
            torch.testing.assert_close(context.added[key], value, rtol=0, atol=0)
        assert context.added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    elif family == "sd3":  # 16 CLIP tokens (both encoders' 32 features, zero-padded to T5's 128) then T5's 256
        assert context.embeds.shape == (2, 16 + 256, 128) and context.pooled.shape == (2, 64)
        assert float(context.embeds[:, :16, 64:].abs().max()) == 0.0 < float(context.embeds[:, 16:, 64:].abs().max())
        torch.testing.assert_close(context.pooled, fed.pooled, rtol=0, atol=0)
    else:  # Flux: T5's 512 token states, the CLIP encoder's pooled output
        assert context.embeds.shape == (2, 512, 128) and context.pooled.shape == (2, 32)
        torch.testing.assert_close(context.pooled, fed.pooled, rtol=0, atol=0)
    # gray-box loss at one timestep, by hand with the pipeline's conditioning
    images = [Image.open(p).convert("RGB") for p in sorted((bases["members"] / "images").iterdir())[:2]]
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(images, height=16, width=16)
        shift = pipe.vae.config.get("shift_factor") or 0.0
        x0 = (pipe.vae.encode(pixels).latent_dist.mean.double() - shift) * pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        if family in FLOW:  # flow matching: x_s = (1 - s) x0 + s noise at s = 0.5, the velocity noise - x0
            xt, target = 0.5 * x0 + 0.5 * noise, noise - x0
        else:
            a = pipe.scheduler.alphas_cumprod.double()[500]
            xt, target = a.sqrt() * x0 + (1 - a).sqrt() * noise, noise
        out = fed.predict(_denoiser(pipe), xt.float(), torch.full((2,), 500)).double()
    expected = -((out - target) ** 2).mean(dim=(1, 2, 3)).numpy()
    scores = graybox_scores(pipe, images, PROMPTS, "loss", loss_timesteps=(500,))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_fine_tunes_of_each_family_generate_seeded_and_batch_independent(bases, family, tmp_path):
    """Full and LoRA fine-tunes of each family's base: the card names the family; both change text-to-image and
    image-to-image generations (text-to-image at the model's own size); a query gives the same image alone,
    repeated or in a batch."""
    base, members = bases["root"] / family, bases["members"]
    recipes = {
        "full": FinetuneConfig(learning_rate=1e-3, **RECIPE),
        "lora": FinetuneConfig(method="lora", lora_rank=2, learning_rate=1e-2, **RECIPE),
    }
    full, lora = (finetune(base, members, tmp_path / k, r, show_progress=False) for k, r in recipes.items())
    for out, method in ((full, "full"), (lora, "lora")):
        card = json.loads((out / "card.json").read_text())
        assert (card["family"], card["method"], card["steps"]) == (family, method, 2)
    assert load_pipeline(full / "pipeline").__class__.__name__ == FAMILIES[family]
    init = Image.open(sorted((members / "images").iterdir())[0]).convert("RGB")
    text = [Query(PROMPTS[i % 2], seed=10 + i, steps=3, guidance=2.0) for i in range(3)]
    image = [Query(PROMPTS[0], seed=20 + i, steps=4, guidance=2.0, strength=0.5) for i in range(2)]
    targets = {
        "base": DiffusersTarget(base, dtype="float64", batch_size=8),
        "full": DiffusersTarget(full / "pipeline", dtype="float64", batch_size=8),
        "lora": DiffusersTarget(base, lora=lora / "lora", dtype="float64", batch_size=8),
    }
    made = {}
    for name, target in targets.items():
        made[name] = (_images(target, text), _images(target, image, [init] * 2))
        np.testing.assert_array_equal(_images(target, text[1:2]), made[name][0][1:2])  # alone = in a batch
        np.testing.assert_array_equal(_images(target, image[1:], [init]), made[name][1][1:])
    # a text-to-image query without a size gets the model's own (16 px), Flux's pipeline too (it defaults to 1024)
    assert made["base"][0].shape == (3, 16, 16, 3)
    for name in ("full", "lora"):
        for tuned, untouched in zip(made[name], made["base"], strict=True):
            assert np.abs(tuned - untouched).max() >= 1  # the fine-tune acts on both channels


@pytest.mark.parametrize("family", FAMILIES)
def test_the_first_fine_tuning_loss_is_the_objective_under_the_pipelines_conditioning(bases, family, tmp_path):
    """One step over the eight images: the loss the card records equals the family's objective, written out here,
    for the same draws (posterior sample, noise, timesteps) with the conditioning the pipeline itself gives the
    captions: the noise at a uniform DDPM step for SD and SDXL (epsilon models), the velocity noise - x0 at SD3's
    shifted flow-matching level s' = 3s / (1 + 2s), s = (1000 - i) / 1000 for a uniform index i, and at s itself
    for Flux (its shift depends on the image size and applies when sampling, not in training)."""
    base, members = bases["root"] / family, bases["members"]
    out = finetune(
        base,
        members,
        tmp_path / "one",
        FinetuneConfig(max_steps=1, batch_size=8, checkpoint_every=0),
        show_progress=False,
    )
    recorded = json.loads((out / "card.json").read_text())["final_loss"]
    pipe = DiffusionPipeline.from_pretrained(base, local_files_only=True)
    data = TrainImages.from_samples(load_image_folder(members).samples, 16)
    index = epoch_batches(8, 8, 0, 0)  # the recipe's seed 0, the first micro-batch
    context = _fed_to_unet(pipe, [data.captions[i] for i in index])
    generator = torch_generator(step_rng(0, 0, 0))
    with torch.no_grad():
        posterior = pipe.vae.encode(to_tensor(data.batch(index, np.random.default_rng(0)))).latent_dist
        sample = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        x0 = (sample - (pipe.vae.config.get("shift_factor") or 0.0)) * pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=generator)
        drawn = torch.randint(0, 1000, (8,), generator=generator)
        if family in FLOW:
            s = (1000 - drawn.double()) / 1000
            sigma = (3 * s / (1 + 2 * s) if family == "sd3" else s).float()[:, None, None, None]
            noisy, target, steps = (1 - sigma) * x0 + sigma * noise, noise - x0, sigma.flatten() * 1000
        else:
            a = pipe.scheduler.alphas_cumprod[drawn][:, None, None, None]
            noisy, target, steps = a.sqrt() * x0 + (1 - a).sqrt() * noise, noise, drawn
        expected = ((context.predict(_denoiser(pipe), noisy, steps) - target) ** 2).mean()
    assert recorded == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_dp_sgd_trains_a_lora_of_the_other_families(bases, family, tmp_path):
    """Opacus's per-sample gradients reach SDXL's UNet with its added conditioning and SD3's and Flux's
    transformers: a DP-SGD LoRA fine-tune runs, accounts and trains."""
    recipe = FinetuneConfig(
        method="lora", lora_rank=2, dp=PrivacyConfig(noise_multiplier=1.0), **(RECIPE | {"batch_size": 4})
    )
    out = finetune(bases["root"] / family, bases["members"], tmp_path / "dp", recipe, show_progress=False)
    card = json.loads((out / "card.json").read_text())
    assert card["family"] == family and card["privacy"]["epsilon"] > 0
    weights = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora.up" in k or "lora_B" in k) > 0


def _single_file(diffusers_file, out, family, rank, scale=1.0):
    """The LoRA weights as one file as they are shared: for SD and SDXL in kohya's key layout,
    ``lora_unet_<module path with underscores>.lora_down/up.weight`` and an ``alpha`` per module (alpha = rank:
    scale 1, as the diffusers file has); for SD3 and Flux in the diffusers layout. ``scale`` multiplies the up
    weights."""
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v * scale if "lora_B" in k else v for k, v in load_file(diffusers_file).items()}
    if family in FLOW:
        save_file(weights, out)
        return out
    converted = {}
    for key, value in weights.items():  # unet.<module>.lora_A.weight -> lora_unet_<module>.lora_down.weight
        module, kind = key.removeprefix("unet.").rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        converted[f"{name}.lora_{ {'A': 'down', 'B': 'up'}[kind.removesuffix('.weight')] }.weight"] = value
        converted[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(converted, out)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_files_round_trip_in_the_diffusers_and_kohya_layouts(bases, family, tmp_path):
    """Adapters saved in the family's diffusers layout load back (stock ``load_lora_weights``) to the in-memory
    model's outputs, every adapted module adapted again (a UNet's on its attention, proj_in / proj_out, feed-forward
    and ResNet convs: files with diffusers' older ``lora.down`` keys lost the attention adapters beside proj_in);
    the same weights as one file in a downloads folder (kohya's layout for SD and SDXL) give a target the same images,
    and its fingerprint hashes that file alone."""
    pipe = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
    modules = ["to_q", "to_k", "to_v", "to_out.0"]
    if family not in FLOW:
        modules += ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
    with torch.random.fork_rng():
        torch.manual_seed(1)
        _add_lora(_denoiser(pipe), FinetuneConfig(method="lora", lora_rank=2, lora_target_modules=modules))
        with torch.no_grad():
            for name, parameter in _denoiser(pipe).named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.2)  # a trained adapter's B is not zero
    _save_lora(pipe, _denoiser(pipe), tmp_path / "lora")
    context = condition(pipe, PROMPTS, 16, "cpu")
    x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        in_memory = context.predict(_denoiser(pipe), x, torch.tensor([300, 700]))
        loaded = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
        plain = context.predict(_denoiser(loaded), x, torch.tensor([300, 700]))
        loaded.load_lora_weights(tmp_path / "lora")
        torch.testing.assert_close(context.predict(_denoiser(loaded), x, torch.tensor([300, 700])), in_memory)
    adapted = [{n for n, m in _denoiser(p).named_modules() if hasattr(m, "lora_B")} for p in (pipe, loaded)]
    assert adapted[0] == adapted[1] and any(n.endswith("proj_in") for n in adapted[0]) == (family not in FLOW)
    assert (in_memory - plain).abs().max() > 1e-3  # the adapters act
    downloads, saved = tmp_path / "downloads", tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    kohya = _single_file(saved, downloads / "style.safetensors", family, 2)
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
    other = _single_file(saved, tmp_path / "other" / "style.safetensors", family, 2, scale=2.0)
    assert DiffusersTarget(bases["root"] / family, lora=other, dtype="float64").fingerprint != fingerprint


@pytest.mark.parametrize("family", ["sdxl", "sd3", pytest.param("flux", marks=pytest.mark.slow)])
def test_pretrain_command_builds_a_base_of_the_family_and_trains_every_text_encoder(digit_folder, tmp_path, family):
    """`diffmia lab pretrain --family sdxl|sd3|flux`: a pipeline of that class whose denoiser and every text encoder
    trained (they differ from the same seed's fresh build), its card naming the family (SD3's and Flux's latents
    shifted as well as scaled); a fine-tune then reads it as that family."""
    from safetensors.torch import load_file as weights

    from diffmia.cli import main
    from diffmia.lab.pipeline import TinySDConfig

    data = digit_folder(tmp_path / "data", 8)
    sizes = [
        "--vae-channels",
        "16,32",
        "--unet-channels",
        "16,32",
        "--unet-layers",
        "1",
        "--text-width",
        "32",
        "--text-layers",
        "1",
    ]
    args = ["lab", "pretrain", str(data), str(tmp_path / "base"), "--split", "all", "--vae-steps", "1"]
    assert main([*args, "--unet-steps", "2", "--family", family, *sizes]) == 0
    card = json.loads((tmp_path / "base" / "card.json").read_text())
    assert (card["family"], card["unet"]["steps"]) == (family, 2) and f"--family {family}" in card["command"]
    assert (card["latent_shift_factor"] != 0.0) == (family in FLOW)
    pipeline = tmp_path / "base" / "pipeline"
    vae = json.loads((pipeline / "vae" / "config.json").read_text())  # what generation and fine-tunes will read
    assert (vae["scaling_factor"], vae["shift_factor"] or 0.0) == (
        card["latent_scaling_factor"],
        card["latent_shift_factor"],
    )
    assert json.loads((pipeline / "model_index.json").read_text())["_class_name"] == FAMILIES[family]
    fresh = build_pipeline(
        [s.caption or "" for s in load_image_folder(data).samples],
        TinySDConfig(
            vae_channels=(16, 32), unet_channels=(16, 32), unet_layers_per_block=1, text_width=32, text_layers=1
        ),
        seed=0,
        family=family,
    )
    trained_parts = (*family_of(fresh).text_encoders, family_of(fresh).denoiser)
    for part in trained_parts:
        (file,) = (pipeline / part).glob("*.safetensors")
        trained, initial = weights(file), getattr(fresh, part).state_dict()
        assert any(not torch.equal(trained[k], initial[k]) for k in trained), part
    tuned = finetune(pipeline, data, tmp_path / "tuned", FinetuneConfig(**RECIPE), show_progress=False)
    assert json.loads((tuned / "card.json").read_text())["family"] == family
    assert main([*args[:3], str(tmp_path / "other"), "--family", "pixart"]) == 2


@pytest.mark.parametrize("family", FLOW)
def test_flow_models_refuse_the_ddim_attacks(bases, family):
    """SecMI and PIA are derived for DDIM on noise- or v-predicting models: refused for SD3 and Flux by name, before
    work."""
    pipe = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
    image = [Image.new("RGB", (16, 16))]
    for attack in ("secmi", "pia"):
        with pytest.raises(
            ConfigError,
            match=f"^{attack} is derived for DDIM .* {family} models are trained by "
            "flow matching: use the loss attack$",
        ):
            graybox_scores(pipe, image, ["x"], attack)


def test_a_guidance_distilled_flux_is_conditioned_on_the_pipelines_default_guidance(bases):
    """FLUX.1-dev embeds the guidance scale: the conditioning carries FluxPipeline's default (3.5), and the
    prediction the fine-tune and the gray-box loss use equals the transformer's output when the pipeline generates
    at that guidance; a model without the embedding gets none."""
    from diffusers import FluxTransformer2DModel

    from diffmia.families import FLUX_GUIDANCE

    pipe = DiffusionPipeline.from_pretrained(bases["root"] / "flux", local_files_only=True)
    assert condition(pipe, PROMPTS, 16, "cpu").guidance is None
    config = dict(pipe.transformer.config) | {"guidance_embeds": True}
    with torch.random.fork_rng():
        torch.manual_seed(3)
        pipe.transformer = FluxTransformer2DModel.from_config(config)
    seen, forward = [], pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **k: seen.append(k) or forward(*a, **k)
    pipe(PROMPTS, num_inference_steps=1, output_type="latent", height=16, width=16)  # guidance_scale left at 3.5
    fed, context = seen[0], condition(pipe, PROMPTS, 16, "cpu")
    assert FLUX_GUIDANCE == 3.5 and context.guidance.tolist() == fed["guidance"].tolist() == [3.5, 3.5]
    with torch.no_grad():
        theirs = pipe._unpack_latents(forward(**fed)[0], 16, 16, pipe.vae_scale_factor)
        x = pipe._unpack_latents(fed["hidden_states"], 16, 16, pipe.vae_scale_factor)
        torch.testing.assert_close(context.predict(pipe.transformer, x, fed["timestep"] * 1000), theirs)
        assert context[1:].guidance.tolist() == [3.5]


EXAMPLES = {  # the family of the hub base each example names, and its pipeline class
    "sd15-lora.toml": ("sd", "StableDiffusionPipeline"),
    "sdxl-lora.toml": ("sdxl", "StableDiffusionXLPipeline"),
    "flux-lora.toml": ("flux", "FluxPipeline"),
}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_lora_recipes_fit_a_model_of_their_family(bases, example):
    """Each example's base is of a family diffmia fine-tunes, and its shadows' LoRA recipe names modules that a
    model of that family has (checked on the tiny one, no weights downloaded); Flux's joint-attention projections
    exist nowhere in an SD UNet."""
    from pathlib import Path

    from diffmia.config import load_config

    config = load_config(Path(__file__).parents[2] / "examples" / example)
    family, pipeline_class = EXAMPLES[example]
    assert family_of_class(pipeline_class).name == family and config.finetune.method == "lora"
    assert config.audit.base_model == config.target.model
    pipe = DiffusionPipeline.from_pretrained(bases["root"] / family, local_files_only=True)
    _add_lora(_denoiser(pipe), config.finetune)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in _denoiser(pipe).named_modules() if ".lora_A" in name}
    for target in config.finetune.lora_target_modules:
        assert any(name.endswith("." + target) for name in adapted), target
    if family == "flux":
        sd = DiffusionPipeline.from_pretrained(bases["root"] / "sd", local_files_only=True)
        with pytest.raises(ConfigError, match=r"has no module named add_k_proj, add_q_proj, add_v_proj, to_add_out$"):
            _add_lora(sd.unet, config.finetune)
