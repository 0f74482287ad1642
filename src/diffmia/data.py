"""Image sets: a folder of images with a ``metadata.jsonl`` or ``metadata.csv`` beside them.

The convention is that of the ``datasets`` image-folder loader: each record names its image by ``file_name``
(relative to the folder) and may carry a ``caption`` (or ``text``) and a stable ``id``; any other fields are
kept as they are. Every problem in a folder is reported at once, before any model is touched.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from diffmia.errors import DataError
from diffmia.records import Sample

CAPTION_FIELDS = ("caption", "text")
MAX_LISTED = 5


@dataclass(frozen=True)
class ImageFolder:
    """A loaded image set: its samples in metadata order and every record's extra fields (by sample id)."""

    root: Path
    samples: tuple[Sample, ...]
    extra: dict[str, dict[str, Any]]

    def __len__(self) -> int:
        return len(self.samples)

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


def _read_records(root: Path) -> tuple[list[dict[str, Any]], Path]:
    jsonl, csv_path = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.is_file():
        records = []
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{jsonl}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{jsonl}, line {number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
        return records, jsonl
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)], csv_path
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    raise DataError(f"image folder {root} has neither metadata.jsonl nor metadata.csv")


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _check_image(path: Path) -> str | None:
    """None if ``path`` decodes completely as an image, else why not."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes every byte: a truncated file fails here, not at verify()
    except FileNotFoundError:
        return "missing"
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"unreadable ({exc})"
    return None


def load_image_folder(root: str | Path, *, require_captions: bool = False) -> ImageFolder:
    """Read and check an image folder: every file present and decodable, file names and ids unique.

    ``require_captions``: every record must have a non-empty ``caption`` (or ``text``) field.
    """
    root = Path(root)
    records, metadata = _read_records(root)
    if not records:
        raise DataError(f"{metadata} lists no images")
    problems: list[str] = []
    no_name = [str(i + 1) for i, r in enumerate(records) if not str(r.get("file_name") or "").strip()]
    if no_name:
        problems.append(f"records without a file_name: {_listed(no_name)}")
    named = [r for r in records if str(r.get("file_name") or "").strip()]
    ids = [str(r.get("id") or r["file_name"]) for r in named]
    for what, values in (("file_name", [r["file_name"] for r in named]), ("id", ids)):
        repeated = [value for value, count in Counter(values).items() if count > 1]
        if repeated:
            problems.append(f"duplicate {what}: {_listed(repeated)}")
    caption_field = next((f for f in CAPTION_FIELDS if any(f in r for r in named)), None)
    if require_captions:
        if caption_field is None:
            problems.append(f"no caption column (expected one of: {', '.join(CAPTION_FIELDS)})")
        else:
            empty = [r["file_name"] for r in named if not str(r.get(caption_field) or "").strip()]
            if empty:
                problems.append(f"no caption for: {_listed(empty)}")
    bad_images = []
    for record in named:
        reason = _check_image(root / record["file_name"])
        if reason:
            bad_images.append(f"{record['file_name']} ({reason})")
    if bad_images:
        problems.append(f"bad images: {_listed(bad_images)}")
    if problems:
        raise DataError(f"{metadata}: " + "; ".join(problems))

    samples, extra = [], {}
    known = {"file_name", "id", *CAPTION_FIELDS}
    for record, sample_id in zip(named, ids, strict=True):
        caption = record.get(caption_field) if caption_field else None
        samples.append(Sample(sample_id, root / record["file_name"], str(caption) if caption else None))
        extra[sample_id] = {k: v for k, v in record.items() if k not in known}
    return ImageFolder(root, tuple(samples), extra)
