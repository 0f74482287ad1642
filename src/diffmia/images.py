"""Reading images and naming them by content: the one way every part of diffmia opens and identifies an image.

Every image enters as 8-bit RGB, whatever its file holds, so encoders, captioners and targets all see the same
pixels; the digest of those pixels is what caches key on and what tells two files with the same image apart
from two different images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffmia.errors import DataError


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as 8-bit RGB: grey, palette, RGBA and 16-bit images are converted, not rejected."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") else max(float(grey.max()), 1.0)
                eight_bit = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                rgb = Image.fromarray(eight_bit, mode="L").convert("RGB")
            else:
                rgb = image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image {path} cannot be decoded: {exc}") from None
    if min(rgb.size) < 2:
        raise DataError(f"image {path} is {rgb.width}x{rgb.height}: too small to encode")
    return rgb


def image_digest(image: Image.Image) -> str:
    """Content hash of an image's pixels (mode and size included): equal pixels, equal digest."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return digest.hexdigest()
