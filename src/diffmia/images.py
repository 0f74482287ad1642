"""Reading images and naming them by content: the one way every part of diffmia opens and identifies an image.

Every image enters as 8-bit RGB, whatever its file holds, so encoders, captioners and targets all see the same
pixels; the digest of those pixels is what caches key on and what tells two files with the same image apart
from two different images.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffmia.errors import DataError, DiffmiaError

MAX_PIXELS = 50_000_000  # about 7,000 x 7,000: far above any model's resolution, far below a decompression bomb


def decode_image(
    source: str | Path | bytes,
    *,
    what: str | None = None,
    formats: Sequence[str] | None = None,
    error: type[DiffmiaError] = DataError,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode one image completely (a truncated file fails here, not later), in its own mode.

    ``source`` is a file or the bytes of one (``what`` names bytes in messages, e.g. "the answer of http://..");
    ``formats`` (PIL names such as "PNG") are the only formats accepted, where a wire format promises one; an image
    of more than ``max_pixels`` pixels is refused from its header, before its pixels are decompressed. Every failure
    is one ``error`` that names the source.
    """
    name = what or (f"image {source}" if not isinstance(source, bytes) else "image")
    too_large = f"{name} declares more than the {max_pixels:,} pixels diffmia decodes (a decompression bomb?)"
    size = "{}x{} pixels: more than the " + f"{max_pixels:,} diffmia decodes (a decompression bomb?)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as image:
                if formats is not None and image.format not in formats:
                    raise error(f"{name} is {image.format or 'of an unknown format'}, expected {' or '.join(formats)}")
                if image.width * image.height > max_pixels:
                    raise error(f"{name} declares " + size.format(image.width, image.height))
                image.load()
                return image
    except DiffmiaError:
        raise
    except FileNotFoundError:
        raise error(f"{name} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise error(too_large) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise error(f"{name} cannot be decoded: {exc}") from None


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as 8-bit RGB: grey, palette, RGBA and 16-bit images are converted, not rejected."""
    return to_rgb(decode_image(path), f"image {path}")


def to_rgb(image: Image.Image, name: str, error: type[DiffmiaError] = DataError) -> Image.Image:
    """A decoded image (``name`` in messages) as 8-bit RGB, as :func:`load_rgb` makes every image file."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        eight_bit = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rgb = Image.fromarray(eight_bit, mode="L").convert("RGB")
    else:
        rgb = image.convert("RGB")
    if min(rgb.size) < 2:
        raise error(f"{name} is {rgb.width}x{rgb.height}: too small to encode")
    return rgb


def image_digest(image: Image.Image) -> str:
    """Content hash of an image's pixels (mode and size included): equal pixels, equal digest."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return digest.hexdigest()
