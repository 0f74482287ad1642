"""Helpers shared by the lab tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from diffmia.lab.data import digits_records


@pytest.fixture(scope="session")
def digit_folder():
    """A function writing ``n`` bundled digits (from ``start``) as a captioned image folder at ``root``."""

    def write(root: Path, n: int, start: int = 0) -> Path:
        pixels, records = digits_records()
        (root / "images").mkdir(parents=True)
        chosen = records[start : start + n]
        for record, image in zip(chosen, pixels[start : start + n], strict=True):
            Image.fromarray(image).save(root / record["file_name"])
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
        return root

    return write
