"""Images drawn by hand for the image-to-image tests (imported as ``from drawn import ONE, SEVEN, rms``)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def digit(points: list[tuple[int, int]], size: int = 32) -> Image.Image:
    """A white stroke on black, as the built-in model's digits are drawn."""
    image = Image.new("RGB", (size, size))
    ImageDraw.Draw(image).line(points, fill=(255, 255, 255), width=4)
    return image


ONE, SEVEN = digit([(16, 5), (16, 27)]), digit([(8, 6), (24, 6), (12, 27)])


def rms(a: object, b: object) -> float:
    """Root mean square pixel difference of two images."""
    return float(np.sqrt(((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2).mean()))
