"""Content-addressed store of generated images: PNG + JSON sidecar per query, written atomically.

An entry is the pair ``<key>.png`` and ``<key>.json``; the sidecar (query, target fingerprint, the PNG's
sha256) is written after the image and is what makes the entry exist. A run killed at any moment therefore
leaves either a complete entry or nothing that is read: at worst an orphan image, which ``verify`` reports
and the next write replaces. Keys come from :meth:`diffmia.records.Query.key`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from diffmia.errors import DataError
from diffmia.files import atomic_path
from diffmia.records import Query


@dataclass(frozen=True)
class CacheProblem:
    key: str
    problem: str


class GenerationCache:
    """Images by query key under ``root`` (two-character fan-out folders)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.png", folder / f"{key}.json"

    def image_path(self, key: str) -> Path:
        """Where the image of query ``key`` is (or will be) stored."""
        return self._paths(key)[0]

    def get(self, key: str) -> Image.Image | None:
        """The cached image, or None when there is no complete entry."""
        png, sidecar = self._paths(key)
        if not sidecar.exists():
            return None
        with Image.open(png) as image:
            image.load()
            return image.copy()

    def load(self, key: str) -> Image.Image:
        """The cached image; a DataError names the key when the entry is missing."""
        image = self.get(key)
        if image is None:
            raise DataError(f"no cached image for query {key} in {self.root}")
        return image

    def __contains__(self, key: str) -> bool:
        return self._paths(key)[1].exists()

    def put(self, key: str, image: Image.Image, query: Query, target_fingerprint: str) -> None:
        """Store ``image`` for ``key``: the PNG first, then the sidecar that completes the entry."""
        png, sidecar = self._paths(key)
        png.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        with atomic_path(png) as tmp:
            tmp.write_bytes(data)
        meta: dict[str, Any] = {
            "key": key,
            "target": target_fingerprint,
            "query": query.identity(),
            "sample_id": query.sample_id,
            "png_sha256": hashlib.sha256(data).hexdigest(),
        }
        with atomic_path(sidecar) as tmp:
            tmp.write_text(json.dumps(meta, sort_keys=True))

    def verify(self) -> tuple[int, list[CacheProblem]]:
        """Check every entry: sidecar readable, image present and matching its hash. Returns (entries, problems)."""
        problems, entries = [], 0
        for sidecar in sorted(self.root.glob("*/*.json")):
            entries += 1
            key = sidecar.stem
            try:
                meta = json.loads(sidecar.read_text())
                expected = meta["png_sha256"]
            except (OSError, ValueError, KeyError) as exc:
                problems.append(CacheProblem(key, f"unreadable sidecar ({exc})"))
                continue
            png = sidecar.with_suffix(".png")
            if not png.exists():
                problems.append(CacheProblem(key, "image missing"))
            elif hashlib.sha256(png.read_bytes()).hexdigest() != expected:
                problems.append(CacheProblem(key, "image does not match its recorded hash"))
        for png in sorted(self.root.glob("*/*.png")):
            if not png.with_suffix(".json").exists():
                problems.append(CacheProblem(png.stem, "image without sidecar (an interrupted write; harmless)"))
        return entries, problems
