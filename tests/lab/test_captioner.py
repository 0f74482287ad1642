"""Captioner fine-tuning: the tiny BLIP trains, saves and reloads through BlipCaptioner; agreement scoring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffmia.captioners import BlipCaptioner
from diffmia.cli import main
from diffmia.data import load_image_folder
from diffmia.errors import TargetError
from diffmia.files import exclusive_lock
from diffmia.lab.captioner import caption_agreement


def test_caption_agreement_scores_each_attribute():
    reference = ["a thin dark upright narrow small handwritten seven, placed high left"]
    same = caption_agreement(reference, reference)
    assert set(same.values()) == {1.0}
    other = caption_agreement(["a bold dark upright narrow small handwritten one, placed high left"], reference)
    assert (other["coverage"], other["digit"], other["darkness"], other["horizontal"]) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.slow
def test_tiny_captioner_trains_and_loads(tmp_path, digit_folder):
    data = digit_folder(tmp_path / "aux", 12)
    out = tmp_path / "cap"
    (tmp_path / "c.toml").write_text("[captioner_training]\nshift_augmentation = 1\n")
    args = ["finetune-captioner", "--model", "tiny", "--data", str(data), "--out", str(out), "--steps", "3"]
    assert main([*args, "--config", str(tmp_path / "c.toml")]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["recipe"]["max_steps"] == 3 and card["recipe"]["shift_augmentation"] == 1
    assert card["data"]["n_images"] == 12
    samples = load_image_folder(data).samples
    captioner = BlipCaptioner(out / "captioner", max_length=20)
    first = captioner.caption(samples[:4])
    assert first == BlipCaptioner(out / "captioner", max_length=20, batch_size=1).caption(samples[:4])
    assert all(isinstance(c, str) and "[DEC]" not in c for c in first)


def test_missing_captioner_weights_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetError, match=r"captioner weights .* point the captioner at that folder"):
        BlipCaptioner(tmp_path / "empty").caption_images([])


@pytest.mark.slow
def test_builtin_captioner_names_the_digit_of_unseen_digits():
    """The shipped tiny BLIP (trained on the public digits) captions private digits it never saw."""
    from diffmia.lab.data import digits_records

    pixels, records = digits_records()
    private = [i for i, r in enumerate(records) if r["split"] == "private"][:200]
    from PIL import Image

    captions = BlipCaptioner("builtin", max_length=32).caption_images([Image.fromarray(pixels[i]) for i in private])
    agreement = caption_agreement(captions, [records[i]["caption"] for i in private])
    assert agreement["digit"] >= 0.8  # 0.95 measured (chance 0.1)
    assert min(agreement.values()) > 0.35  # every attribute word above chance (0.2-0.33)


def test_builtin_captioner_fine_tunes_on_a_split(tmp_path, digit_folder):
    data = digit_folder(tmp_path / "digits", 30)
    out = tmp_path / "tuned"
    args = ["finetune-captioner", "--model", "builtin", "--data", str(data), "--out", str(out), "--steps", "2"]
    assert main([*args, "--split", "public"]) == 0
    card = json.loads((out / "card.json").read_text())
    n_public = sum(json.loads(line)["split"] == "public" for line in (data / "metadata.jsonl").read_text().splitlines())
    assert card["data"] == {"folder": str(data), "split": "public", "n_images": n_public} and 0 < n_public < 30
    assert card["base_model"] == "builtin" and card["recipe"]["learning_rate"] == 1e-4
    assert main([*args[:-4], "--out", str(tmp_path / "none"), "--split", "nope"]) == 2


def test_captioner_fine_tunes_are_reproducible_whatever_the_global_random_state(tmp_path, digit_folder):
    """BLIP trains with dropout (0.1 here), which draws from torch's global generator: the training loop seeds it
    per step, so two runs of one recipe give the same weights, and the caller's random state is left alone."""
    import torch
    from safetensors.torch import load_file

    from diffmia.config import CaptionerTrainingConfig
    from diffmia.lab.captioner import finetune_captioner

    data = digit_folder(tmp_path / "aux", 16)
    recipe = CaptionerTrainingConfig(max_steps=3, batch_size=8, learning_rate=1e-3, checkpoint_every=0)
    weights = []
    for run in range(2):
        torch.manual_seed(100 + run)  # a different global state before each run
        before = torch.random.get_rng_state()
        folder = finetune_captioner("builtin", data, tmp_path / f"run{run}", recipe, show_progress=False)
        assert torch.equal(torch.random.get_rng_state(), before)
        weights.append(load_file(folder / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)
    # and training did move the weights (dropout is active: the recipe's steps are not no-ops)
    base = load_file(Path(BlipCaptioner("builtin").model) / "model.safetensors")
    assert max(float((weights[0][k] - base[k]).abs().max()) for k in base if k in weights[0]) > 1e-4


class _Killed(Exception):
    """Stands for a run killed after its first checkpoint."""


def test_finetune_captioner_refuses_other_settings_and_a_finished_folder(tmp_path, digit_folder, monkeypatch, capsys):
    from diffmia.lab import captioner

    data = digit_folder(tmp_path / "aux", 8)
    out = tmp_path / "cap"
    args = ["finetune-captioner", "--model", "tiny", "--data", str(data), "--out", str(out)]

    def killed(**kwargs):
        raise _Killed

    with exclusive_lock(out, "captioner folder"):  # another run trains there
        assert main([*args, "--steps", "2"]) == 2
    assert f"captioner folder {out} is in use by process {os.getpid()} " in capsys.readouterr().err
    monkeypatch.setattr(captioner, "train", killed)
    with pytest.raises(_Killed):
        main([*args, "--steps", "2"])
    monkeypatch.undo()
    assert main([*args, "--steps", "3"]) == 2  # the interrupted run's checkpoints were written with 2 steps
    error = capsys.readouterr().err.strip()
    assert (
        error.count("\n") == 0
        and error.startswith("Error: ")
        and "checkpoints was written with another recipe" in error
    )
    assert main([*args, "--steps", "2"]) == 0
    card = (out / "card.json").read_text()
    capsys.readouterr()
    assert main([*args, "--steps", "2"]) == 2  # finished: never overwritten in place
    assert f"Error: {out} already holds a finished captioner (card.json)" in capsys.readouterr().err
    assert (out / "card.json").read_text() == card
