"""The training loop's data path (seeded epochs, crops and flips that are really applied) and its output folders:
one run at a time, never resumed with other settings."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from diffmia.errors import ConfigError, DiffmiaError
from diffmia.files import exclusive_lock
from diffmia.lab.seeding import step_rng
from diffmia.lab.training import TrainImages, check_resumable, epoch_batches, latest_checkpoint
from diffmia.records import Sample


def test_epochs_visit_every_image_once_and_are_seeded():
    seen = np.concatenate([epoch_batches(10, 4, seed=3, micro_step=m) for m in range(3)])
    assert sorted(seen) == list(range(10))  # 3 batches of 4, 4, 2
    np.testing.assert_array_equal(epoch_batches(10, 4, 3, 5), epoch_batches(10, 4, 3, 5))
    assert not np.array_equal(epoch_batches(10, 4, 3, 0), epoch_batches(10, 4, 3, 3))  # next epoch reshuffles


def _asymmetric(tmp_path, size=(12, 8)):
    pixels = np.arange(size[0] * size[1] * 3, dtype=np.uint8).reshape(size[1], size[0], 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    return [Sample("a", tmp_path / "a.png", "x")]


def test_centre_crop_random_crop_and_flip(tmp_path):
    samples = _asymmetric(tmp_path)  # 12 wide, 8 high: resized so the short side is 8 -> unchanged
    centre = TrainImages.from_samples(samples, 8, center_crop=True)
    np.testing.assert_array_equal(centre.batch(np.array([0]), step_rng(0, 0))[0], centre.images[0][:, 2:10])
    random = TrainImages.from_samples(samples, 8, center_crop=False)
    lefts = {
        int(np.argwhere((random.images[0] == random.batch(np.array([0]), step_rng(0, m))[0][0, 0]).all(-1))[0][1])
        for m in range(40)
    }
    assert lefts == {0, 1, 2, 3, 4}  # every horizontal offset occurs
    flip = TrainImages.from_samples(samples, 8, center_crop=True, random_flip=True)
    flipped = [
        np.array_equal(flip.batch(np.array([0]), step_rng(0, m))[0], centre.images[0][:, 2:10][:, ::-1])
        for m in range(200)
    ]
    assert 0.4 < np.mean(flipped) < 0.6


def test_latest_checkpoint_ignores_partial_ones(tmp_path):
    for name in ("step-2", "step-10", ".step-12.tmp", "other"):
        (tmp_path / name).mkdir()
    assert latest_checkpoint(tmp_path) == (10, tmp_path / "step-10")
    assert latest_checkpoint(tmp_path / "missing") is None


def _train(trainer, model, data, out):
    from diffmia.config import CaptionerTrainingConfig, FinetuneConfig
    from diffmia.lab.captioner import finetune_captioner
    from diffmia.lab.finetune import finetune
    from diffmia.lab.pipeline import TinySDConfig
    from diffmia.lab.pretrain import PretrainConfig, pretrain

    if trainer == "finetune":
        return finetune(model, data, out, FinetuneConfig(max_steps=1, batch_size=2), show_progress=False)
    if trainer == "pretrain":
        tiny = TinySDConfig(
            resolution=16,
            vae_channels=(16, 32),
            unet_channels=(16, 32),
            unet_layers_per_block=1,
            text_width=32,
            text_layers=1,
            text_heads=2,
            max_length=16,
        )
        recipe = PretrainConfig(vae_steps=1, unet_steps=1, batch_size=2, checkpoint_every=0)
        return pretrain(data, out, split=None, recipe=recipe, model=tiny, show_progress=False)
    return finetune_captioner("tiny", data, out, CaptionerTrainingConfig(max_steps=1), show_progress=False)


@pytest.mark.parametrize("trainer", ["finetune", "pretrain", "captioner"])
def test_a_folder_another_run_trains_in_is_refused_before_training(trainer, tmp_path, digit_folder, tiny_model):
    """Two runs in one folder would share (and delete) each other's checkpoints: the second is refused at once."""
    data = digit_folder(tmp_path / "data", 4)
    out = tmp_path / "out"
    busy = rf"folder {out} is in use by process {os.getpid()} "
    with exclusive_lock(out, "test"), pytest.raises(DiffmiaError, match=busy):
        _train(trainer, tiny_model, data, out)
    assert [p.name for p in out.iterdir()] == [".diffmia.lock"]  # nothing trained, nothing written


def test_checkpoints_of_other_settings_or_unreadable_ones_are_refused(tmp_path):
    check_resumable(tmp_path, {"recipe": 1, "data": "a"}, resume=True)
    check_resumable(tmp_path, {"recipe": 1, "data": "a"}, resume=True)
    with pytest.raises(ConfigError, match="was written with another data, recipe; use the same settings"):
        check_resumable(tmp_path, {"recipe": 2, "data": "b"}, resume=True)
    for broken, problem in (("{oops", "cannot be read"), ("[]", "is not a JSON object")):
        (tmp_path / "run.json").write_text(broken)
        with pytest.raises(ConfigError, match=rf"run\.json {problem}.*delete .* to start over"):
            check_resumable(tmp_path, {"recipe": 1}, resume=True)
    check_resumable(tmp_path, {"recipe": 3}, resume=False)  # starting over records the new settings
    assert json.loads((tmp_path / "run.json").read_text()) == {"recipe": 3}
