"""Content-addressed store of generated images: PNG + JSON sidecar per query, written atomically.

An entry is the pair ``<key>.png`` and ``<key>.json``; the sidecar (query, target fingerprint, the PNG's
sha256) is written after the image and is what makes the entry exist. A run killed at any moment therefore
leaves either a complete entry or nothing that is read: at worst an orphan image, which ``verify`` reports
and the next write replaces. An entry damaged later (its image gone, changed, or not a decodable PNG; its sidecar
unreadable) counts as missing, so the next run generates it again; ``verify`` reports it. Keys come from
:meth:`diffmia.records.Query.key`.
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
from diffmia.files import atomic_path, blocking_file
from diffmia.images import decode_image
from diffmia.records import Query


@dataclass(frozen=True)
class CacheProblem:
    key: str
    problem: str


class GenerationCache:
    """Images by query key under ``root`` (two-character fan-out folders)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if (blocker := blocking_file(self.root)) is not None:  # found now, not after the first generation
            raise DataError(f"cannot use {self.root} as a generation cache: {blocker} is a file, not a folder")

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.png", folder / f"{key}.json"

    def image_path(self, key: str) -> Path:
        """Where the image of query ``key`` is (or will be) stored."""
        return self._paths(key)[0]

    @staticmethod
    def _check(png: Path, sidecar: Path) -> tuple[bytes | None, str | None]:
        """The entry's PNG bytes when its sidecar is readable and records their hash, else why not (None: no
        sidecar, an entry never completed)."""
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, f"unreadable sidecar ({exc})"
        expected = meta.get("png_sha256") if isinstance(meta, dict) else None
        if not isinstance(expected, str):
            return None, "unreadable sidecar (not a JSON object with png_sha256)"
        try:
            data = png.read_bytes()
        except FileNotFoundError:
            return None, "image missing"
        except OSError as exc:
            return None, f"image unreadable ({exc.strerror or exc})"
        if hashlib.sha256(data).hexdigest() != expected:
            return None, "image does not match its recorded hash"
        return data, None

    def get(self, key: str) -> Image.Image | None:
        """The cached image, or None when there is no complete, intact entry (a damaged one is generated again)."""
        data, _ = self._check(*self._paths(key))
        if data is None:
            return None
        try:
            return decode_image(data, what=f"cached image {key}", formats=("PNG",))
        except DataError:
            return None

    def load(self, key: str) -> Image.Image:
        """The cached image; a DataError names the key when the entry is missing."""
        image = self.get(key)
        if image is None:
            raise DataError(f"no cached image for query {key} in {self.root}")
        return image

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` has a complete entry whose image matches its recorded hash (not decoded here)."""
        return self._check(*self._paths(key))[0] is not None

    def put(self, key: str, image: Image.Image, query: Query, target_fingerprint: str) -> None:
        """Store ``image`` for ``key``: the PNG first, then the sidecar that completes the entry."""
        png, sidecar = self._paths(key)
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
        """Check every entry: sidecar readable, image present, matching its hash and decodable. Returns (entries,
        problems)."""
        problems, entries = [], 0
        for sidecar in sorted(self.root.glob("*/*.json")):
            entries += 1
            key = sidecar.stem
            data, problem = self._check(sidecar.with_suffix(".png"), sidecar)
            if data is not None:
                try:
                    decode_image(data, what="image", formats=("PNG",))
                except DataError as exc:
                    problem = str(exc)
            if problem is not None:
                problems.append(CacheProblem(key, problem))
        for png in sorted(self.root.glob("*/*.png")):
            if not png.with_suffix(".json").exists():
                problems.append(CacheProblem(png.stem, "image without sidecar (an interrupted write; harmless)"))
        return entries, problems
