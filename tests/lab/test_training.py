"""The training loop's data path: seeded epochs, crops and flips that are really applied."""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffmia.lab.seeding import step_rng
from diffmia.lab.training import TrainImages, epoch_batches, latest_checkpoint
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
    lefts = {int(np.argwhere((random.images[0] == random.batch(np.array([0]), step_rng(0, m))[0][0, 0]).all(-1))[0][1])
             for m in range(40)}  # fmt: skip
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
