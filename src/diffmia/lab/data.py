"""The bundled data set: scikit-learn's 1,797 handwritten digits as an image folder with fine-grained captions.

Each image gets a caption from its class and seven measured properties, each cut into levels at per-class
quantiles so that every level is equally common within a digit: stroke coverage (5 levels), ink darkness
(4), slant (5), width-to-height ratio (4), size (3), vertical (5) and horizontal (5) position. About 95% of
the images end up with a caption of their own, so a caption can point a model at one image, as the
attribute captions of face data sets do.

A fixed, seeded split marks 1,197 images "public" (the base model is pretrained on them) and 600
"private" (the pool that members, non-members and the attacker's auxiliary data come from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffmia.errors import DataError
from diffmia.files import atomic_path, make_folder

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LEVEL_WORDS: dict[str, tuple[str, ...]] = {
    "coverage": ("hairline", "thin", "medium", "bold", "heavy"),
    "darkness": ("faint", "soft", "dark", "inky"),
    "slant": ("backslanted", "reclined", "upright", "tilted", "slanted"),
    "aspect": ("narrow", "slim", "broad", "wide"),
    "size": ("small", "midsize", "large"),
    "vertical": ("top", "high", "middle", "low", "bottom"),
    "horizontal": ("leftmost", "left", "centre", "right", "rightmost"),
}
RESOLUTION = 32
SPLIT_SEED = 0
N_PRIVATE = 600
INK_THRESHOLD = 0.3  # of the 0..1 intensity: what counts as a stroke pixel


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """The seven measured properties of (n, 8, 8) intensity images in [0, 1], from image moments."""
    yy, xx = np.mgrid[0:8, 0:8] + 0.5
    mass = images.sum(axis=(1, 2))
    cx = (images * xx).sum(axis=(1, 2)) / mass
    cy = (images * yy).sum(axis=(1, 2)) / mass
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    mu20 = (images * dx**2).sum(axis=(1, 2)) / mass
    mu02 = (images * dy**2).sum(axis=(1, 2)) / mass
    mu11 = (images * dx * dy).sum(axis=(1, 2)) / mass
    stroke = images > INK_THRESHOLD
    return {
        "coverage": stroke.sum(axis=(1, 2)).astype(float),
        "darkness": np.array([im[s].mean() for im, s in zip(images, stroke, strict=True)]),
        "slant": -mu11 / mu02,  # horizontal shift per unit height, positive = leaning right
        "aspect": np.sqrt(mu20 / mu02),
        "size": (mu20 * mu02) ** 0.25,
        "vertical": cy,
        "horizontal": cx,
    }


def levels_within_class(values: np.ndarray, classes: np.ndarray, n_levels: int) -> np.ndarray:
    """Level 0..n_levels-1 of each value, cut at the quantiles of its own class."""
    levels = np.zeros(values.shape, dtype=int)
    for c in np.unique(classes):
        within = classes == c
        cuts = np.quantile(values[within], np.arange(1, n_levels) / n_levels)
        levels[within] = np.searchsorted(cuts, values[within], side="right")
    return levels


def digit_captions(images: np.ndarray, classes: np.ndarray) -> list[str]:
    """Fine-grained captions, e.g. "a thin dark upright narrow small handwritten seven, placed high left"."""
    properties = measure(images)
    words = {
        name: np.array(choices)[levels_within_class(properties[name], classes, len(choices))]
        for name, choices in LEVEL_WORDS.items()
    }
    return [
        f"a {words['coverage'][i]} {words['darkness'][i]} {words['slant'][i]} {words['aspect'][i]} "
        f"{words['size'][i]} handwritten {DIGIT_NAMES[c]}, placed {words['vertical'][i]} {words['horizontal'][i]}"
        for i, c in enumerate(classes)
    ]


def digits_records() -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The 1,797 digits as 32x32 RGB uint8 images and their metadata records (id, caption, label, split)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    intensities = digits.images / 16.0
    classes = digits.target.astype(int)
    captions = digit_captions(intensities, classes)
    private = np.zeros(len(classes), dtype=bool)
    private[np.random.default_rng(SPLIT_SEED).permutation(len(classes))[:N_PRIVATE]] = True
    pixels = np.empty((len(classes), RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    for i, image in enumerate(intensities):
        small = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
        pixels[i] = np.asarray(small.resize((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC).convert("RGB"))
    records = [
        {
            "file_name": f"images/digit-{i:04d}.png",
            "id": f"digit-{i:04d}",
            "caption": captions[i],
            "label": int(classes[i]),
            "split": "private" if private[i] else "public",
        }
        for i in range(len(classes))
    ]
    return pixels, records


def write_digits(out_dir: str | Path) -> Path:
    """Write the bundled digits as an image folder (PNG + metadata.jsonl) into ``out_dir``; return it."""
    out = Path(out_dir)
    if (out / "metadata.jsonl").exists():
        raise DataError(f"{out} already holds a metadata.jsonl; choose an empty folder")
    pixels, records = digits_records()
    make_folder(out / "images", "image folder")
    for image, record in zip(pixels, records, strict=True):
        Image.fromarray(image).save(out / record["file_name"])
    with atomic_path(out / "metadata.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return out
