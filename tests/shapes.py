"""A second, synthetic image set (imported as ``from shapes import write_shapes``): captioned 32-px images of one
coloured shape on a plain background, nothing like a digit.

The caption names the colour, the shape, its size class, the ninth of the image it sits in and the background, as
the digits' captions name style and placement; the exact size and position inside those classes are drawn at random
per image and said nowhere, so a model that reproduces them from the caption has memorised that image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 230), "yellow": (235, 215, 40)}
BACKGROUNDS = {"black": (10, 10, 10), "white": (240, 240, 240)}
SHAPES = ("square", "disc")
SIZES = {"small": (7.0, 11.0), "large": (12.0, 17.0)}
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")


def write_shapes(root: Path, n: int, seed: int, size: int = 32) -> Path:
    """``n`` captioned images (ids ``shape-{seed}-{i}``) in a new image folder at ``root``; seeded."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    records, ninth = [], size / 3
    for i in range(n):
        colour, shape = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        background, scale = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], list(SIZES)[rng.integers(len(SIZES))]
        row, column = rng.integers(3), rng.integers(3)
        side = rng.uniform(*SIZES[scale])
        cx, cy = (np.array([column, row]) + 0.5) * ninth + rng.uniform(-ninth / 3, ninth / 3, 2)
        x, y = np.clip([cx - side / 2, cy - side / 2], 0, size - side)
        image = Image.new("RGB", (size, size), BACKGROUNDS[background])
        box = (float(x), float(y), float(x + side), float(y + side))
        draw = ImageDraw.Draw(image)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
        name = f"images/shape-{seed}-{i:04d}.png"
        image.save(root / name)
        place = "centre" if (row, column) == (1, 1) else f"{ROWS[row]} {COLUMNS[column]}"
        caption = f"a {scale} {colour} {shape} at the {place} on {background}"
        records.append({"file_name": name, "id": f"shape-{seed}-{i}", "caption": caption})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


if __name__ == "__main__":  # python tests/shapes.py OUT N SEED: the folder the shapes base was pretrained on
    import sys

    out, n, seed = sys.argv[1:]
    print(write_shapes(Path(out), int(n), int(seed)))
