"""Images: every file enters as 8-bit RGB, and equal pixels get equal digests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffmia.errors import DataError
from diffmia.images import image_digest, load_rgb


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "LA", "CMYK"])
def test_image_modes_are_converted(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    grey16 = np.asarray(rgb.convert("L"), np.uint16) * 257
    image = Image.fromarray(grey16) if mode == "I;16" else rgb.convert(mode)
    path = tmp_path / f"x.{'tiff' if mode == 'CMYK' else 'png'}"
    image.save(path)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (5, 6)
    if mode == "I;16":
        np.testing.assert_array_equal(np.asarray(loaded)[..., 0], np.asarray(rgb.convert("L")))


def test_undecodable_and_tiny_images_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad\.png cannot be decoded"):
        load_rgb(tmp_path / "bad.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(DataError, match=r"dot\.png is 1x1: too small"):
        load_rgb(tmp_path / "dot.png")
    with pytest.raises(DataError, match=r"gone\.png does not exist"):
        load_rgb(tmp_path / "gone.png")


def test_image_digest_follows_pixels_not_files(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.bmp")
    assert image_digest(load_rgb(tmp_path / "a.png")) == image_digest(load_rgb(tmp_path / "b.bmp"))
    assert image_digest(Image.fromarray(pixels)) != image_digest(Image.fromarray(pixels.transpose(1, 0, 2).copy()))
    assert image_digest(Image.fromarray(pixels)) != image_digest(Image.fromarray(pixels).convert("RGBA"))


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, bomb_png):
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100
    with pytest.raises(DataError, match=r"bomb\.png declares .*decompression bomb"):
        load_rgb(bomb)
