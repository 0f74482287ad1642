"""Writing files safely and naming folders by content: the ground floor every writer and cache stands on.

Writers are atomic, so a failed or interrupted run never leaves a partial output file behind; a model folder's
digest names its weights, so a cached result is never reused for different weights under the same path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)  # the only way to read the umask is to set it: put it straight back
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the ``with`` block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: str | Path, payload: Any) -> None:
    """``payload`` as indented UTF-8 JSON, atomically; NaN and infinity are refused, as strict JSON readers would."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def weights_digest(folder: Path) -> str:
    """Content hash of a local model folder's weights and configuration.

    Reading gigabytes of weights is slow, so the hash is remembered for as long as no weight file's name, size
    or modification time changes: an audit asks for the same model's fingerprint many times.
    """
    files = sorted(f for f in Path(folder).rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"))
    signature = tuple((f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _content_digest(str(Path(folder).resolve()), signature)


@functools.lru_cache(maxsize=64)
def _content_digest(folder: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in signature:
        digest.update(name.encode())
        with (Path(folder) / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
