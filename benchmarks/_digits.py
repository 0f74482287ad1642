"""Shared set-up of the lab benchmarks: the bundled digits, split as the demo splits them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffmia.lab.data import digits_records


def private_split(
    n_members: int, n_nonmembers: int, seed: int = 0
) -> tuple[np.ndarray, list[dict], list[int], list[int]]:
    """All pixels and records, and disjoint member / non-member indices drawn from the private pool."""
    pixels, records = digits_records()
    private = [i for i, r in enumerate(records) if r["split"] == "private"]
    chosen = np.random.default_rng(seed).permutation(private)
    return (
        pixels,
        records,
        [int(i) for i in chosen[:n_members]],
        [int(i) for i in chosen[n_members : n_members + n_nonmembers]],
    )


def write_folder(root: Path, pixels: np.ndarray, records: list[dict], indices: list[int]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(pixels[i]).save(root / records[i]["file_name"])
    (root / "metadata.jsonl").write_text("".join(json.dumps(records[i]) + "\n" for i in indices))
    return root
