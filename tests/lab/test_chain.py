"""The whole lab chain at tiny sizes: build -> pretrain -> fine-tune (full, LoRA) -> stock pipelines, seeded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffmia.cli import main
from diffmia.config import FinetuneConfig
from diffmia.lab.data import digits_records
from diffmia.lab.finetune import finetune
from diffmia.lab.pipeline import build_tokenizer
from diffmia.lab.pretrain import PretrainConfig, pretrain
from sizes import TINY

RECIPE = {"batch_size": 8, "checkpoint_every": 0, "max_steps": 2}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, digit_folder):
    root = tmp_path_factory.mktemp("lab")
    data = digit_folder(root / "public", 24)
    members = digit_folder(root / "members", 16, start=100)
    recipe = PretrainConfig(vae_steps=2, unet_steps=2, batch_size=8, checkpoint_every=0)
    base = pretrain(data, root / "base", split=None, recipe=recipe, model=TINY, show_progress=False)
    return {"root": root, "base": base, "members": members}


def _generate(pipe, seed, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        ["a thin dark upright narrow small handwritten seven, placed high left"] * 2,
        num_inference_steps=3,
        guidance_scale=3.0,
        generator=generator,
        output_type="np",
        **kwargs,
    ).images


def test_tokenizer_keeps_every_caption_word_whole():
    captions = [r["caption"] for r in digits_records()[1]]
    tokenizer = build_tokenizer(captions, 32)
    words = {w for c in captions for w in c.replace(",", " ,").split()}
    assert all(len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in words)


def test_base_loads_in_stock_pipelines_and_is_seeded(lab):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    card = json.loads((lab["base"].parent / "card.json").read_text())
    assert (card["vae"]["steps"], card["unet"]["steps"], card["data"]["n_images"]) == (2, 2, 24)
    t2i = StableDiffusionPipeline.from_pretrained(lab["base"], local_files_only=True)
    a, b, c = _generate(t2i, 1), _generate(t2i, 1), _generate(t2i, 2)
    assert a.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0
    i2i = StableDiffusionImg2ImgPipeline.from_pretrained(lab["base"], local_files_only=True)
    init = Image.open(next((lab["members"] / "images").iterdir())).convert("RGB").resize((16, 16))
    x, y = (_generate(i2i, 5, image=[init, init], strength=0.5) for _ in range(2))
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_full_and_lora_fine_tunes_reload_in_stock_pipelines(lab):
    from diffusers import StableDiffusionPipeline

    root = lab["root"]
    full = finetune(lab["base"], lab["members"], root / "full", FinetuneConfig(**RECIPE), show_progress=False)
    card = json.loads((full / "card.json").read_text())
    assert (card["method"], card["steps"], card["data"]["n_images"], card["resolution"]) == ("full", 2, 16, 16)
    assert not (full / "checkpoints").exists()
    tuned = StableDiffusionPipeline.from_pretrained(full / "pipeline", local_files_only=True)
    base = StableDiffusionPipeline.from_pretrained(lab["base"], local_files_only=True)
    np.testing.assert_array_equal(_generate(tuned, 3), _generate(tuned, 3))
    assert np.abs(_generate(tuned, 3) - _generate(base, 3)).max() > 0

    lora = finetune(
        lab["base"],
        lab["members"],
        root / "lora",
        FinetuneConfig(method="lora", lora_rank=2, learning_rate=1e-2, random_flip=True, **RECIPE),
        show_progress=False,
    )
    assert (lora / "lora" / "pytorch_lora_weights.safetensors").is_file()
    with_lora = StableDiffusionPipeline.from_pretrained(lab["base"], local_files_only=True)
    with_lora.load_lora_weights(lora / "lora")
    np.testing.assert_array_equal(_generate(with_lora, 3), _generate(with_lora, 3))
    assert np.abs(_generate(with_lora, 3) - _generate(base, 3)).max() > 0  # the trained adapter acts


def test_finetune_command_trains_what_the_library_trains(lab, tmp_path, capsys):
    """`diffmia finetune` with its options gives the adapter of the library call with the same recipe, bit for bit,
    and a card that records the options."""
    args = [
        "finetune",
        "--model",
        str(lab["base"]),
        "--data",
        str(lab["members"]),
        "--out",
        str(tmp_path / "cli"),
        "--method",
        "lora",
        "--rank",
        "2",
        "--steps",
        "2",
        "--learning-rate",
        "0.01",
        "--batch-size",
        "8",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    out = tmp_path / "cli"
    assert capsys.readouterr().out == f"fine-tune written to {out} (card: {out / 'card.json'})\n"
    card = json.loads((tmp_path / "cli" / "card.json").read_text())
    assert (card["method"], card["steps"], card["data"]["n_images"]) == ("lora", 2, 16)
    assert (card["recipe"]["lora_rank"], card["recipe"]["learning_rate"], card["recipe"]["seed"]) == (2, 0.01, 3)
    recipe = FinetuneConfig(method="lora", lora_rank=2, max_steps=2, learning_rate=0.01, batch_size=8, seed=3)
    library = finetune(lab["base"], lab["members"], tmp_path / "library", recipe, show_progress=False)
    weights = "lora/pytorch_lora_weights.safetensors"
    cli, same = load_file(tmp_path / "cli" / weights), load_file(library / weights)
    assert cli.keys() == same.keys() and all(torch.equal(cli[k], same[k]) for k in cli)
    assert max(float(v.abs().max()) for k, v in cli.items() if "lora_B" in k or "lora.up" in k) > 0  # it trained


FINETUNE_SCRIPT = """
import sys
from diffmia.config import FinetuneConfig
from diffmia.lab.finetune import finetune
finetune(sys.argv[1], sys.argv[2], sys.argv[3], FinetuneConfig(batch_size=8, max_steps=int(sys.argv[4]),
         checkpoint_every=2, learning_rate=1e-3), show_progress=False)
"""


@pytest.mark.slow
def test_killed_fine_tune_resumes_to_the_same_weights(lab):
    root = lab["root"]
    steps = "120"
    args = [str(lab["base"]), str(lab["members"])]
    killed = root / "killed"
    process = subprocess.Popen([sys.executable, "-c", FINETUNE_SCRIPT, *args, str(killed), steps])
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-2").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "card.json").exists(), "the run finished before it could be killed"
    recipe = FinetuneConfig(batch_size=8, max_steps=int(steps), checkpoint_every=2, learning_rate=1e-3)
    finetune(lab["base"], lab["members"], killed, recipe, show_progress=False)
    resumed_from = json.loads((killed / "card.json").read_text())["resumed_from"]
    assert resumed_from is not None and resumed_from >= 2
    whole = finetune(lab["base"], lab["members"], root / "whole", recipe, show_progress=False)
    weights = "pipeline/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(killed / weights), load_file(whole / weights)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_pretrain_command_at_default_size(digit_folder, tmp_path):
    data = digit_folder(tmp_path / "data", 8)
    args = ["lab", "pretrain", str(data), str(tmp_path / "base"), "--split", "all", "--vae-steps", "1"]
    assert main([*args, "--unet-steps", "1"]) == 0
    card = json.loads((tmp_path / "base" / "card.json").read_text())
    assert card["model"]["unet_channels"] == [32, 64] and card["data"]["n_images"] == 8
    assert (tmp_path / "base" / "pipeline" / "model_index.json").is_file()


def test_finetune_bad_input_fails_before_training(lab, digit_folder, tmp_path, capsys):
    members = lab["members"]
    out = tmp_path / "out"
    common = ["finetune", "--model", str(lab["base"]), "--out", str(out)]
    assert main([*common, "--data", str(members), "--rank", "0"]) == 2
    assert "finetune.lora_rank: input should be greater than or equal to 1" in capsys.readouterr().err
    broken = digit_folder(tmp_path / "broken", 3)
    (broken / "images" / "digit-0001.png").unlink()
    assert main([*common, "--data", str(broken)]) == 2
    assert "images/digit-0001.png (missing)" in capsys.readouterr().err
    assert main(["finetune", "--model", str(tmp_path / "nothing"), "--data", str(members), "--out", str(out)]) == 2
    assert "cannot load a diffusers pipeline from" in capsys.readouterr().err
    assert not out.exists()


def test_pretrain_command_builds_another_family_and_refuses_to_mix_checkpoints(lab, capsys):
    from diffusers import UNet2DConditionModel

    out = lab["root"] / "other-family"
    sizes = [
        "--vae-channels",
        "16,32,32",
        "--unet-channels",
        "16,32,64",
        "--unet-layers",
        "1",
        "--text-width",
        "32",
        "--text-layers",
        "1",
    ]
    args = [
        "lab",
        "pretrain",
        str(lab["members"]),
        str(out),
        "--split",
        "all",
        "--vae-steps",
        "1",
        "--unet-steps",
        "1",
        "--seed",
        "4",
    ]
    assert main([*args, *sizes]) == 0
    card = json.loads((out / "card.json").read_text())
    assert (card["model"]["vae_channels"], card["model"]["unet_channels"]) == ([16, 32, 32], [16, 32, 64])
    assert (card["model"]["unet_layers_per_block"], card["model"]["text_width"], card["recipe"]["seed"]) == (1, 32, 4)
    assert card["command"].startswith("diffmia lab pretrain ") and "--unet-channels 16,32,64" in card["command"]
    unet = UNet2DConditionModel.from_pretrained(out / "pipeline" / "unet")
    assert list(unet.config.block_out_channels) == [16, 32, 64] and unet.config.cross_attention_dim == 32
    capsys.readouterr()
    # the checkpoints of one architecture never resume into another
    assert main([*args, *sizes[:2], "--unet-channels", "16,32"]) == 2
    assert "checkpoints was written with another model" in capsys.readouterr().err
    assert main([*args, "--unet-channels", "48,96", "--text-width", "30"]) == 2
    err = capsys.readouterr().err
    assert "unet_channels [48, 96] must be multiples of 32" in err and "text_width 30 must be a multiple of" in err
    assert main([*args, "--unet-channels", "16,x"]) == 2
    assert "--unet-channels '16,x': give comma-separated integers" in capsys.readouterr().err
