"""Writing files safely and naming folders by content: the ground floor every writer and cache stands on.

Writers are atomic and durable, so a failed, interrupted or power-cut run never leaves a partial output file behind;
a folder that one process writes at a time is held by an exclusive lock; a model folder's digest names its weights,
so a cached result is never reused for different weights under the same path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffmia.errors import DiffmiaError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: diffmia runs on Linux and macOS, where locks are flock(2)
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0o022)  # the only way to read the umask is to set it: put it straight back
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the ``with`` block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # e.g. a folder on the way is a file, or is not writable
        raise DiffmiaError(f"cannot write {path}: {_folder_problem(path.parent, exc)}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it the usual permissions
        _fsync(tmp)  # the content is on disk before the name points at it: a power cut leaves old or new, whole
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # and the rename itself; some systems cannot open or fsync a folder
            _fsync(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def make_folder(path: str | Path, what: str = "folder") -> Path:
    """Create the folder ``path`` (and its parents) if needed; a DiffmiaError names ``what`` when it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a folder on the way is a file, or is not writable
        raise DiffmiaError(f"cannot create {what} {path}: {_folder_problem(path, exc)}") from None
    return path


def blocking_file(folder: str | Path) -> Path | None:
    """The file that stands where ``folder`` or one of its parents would have to be, if there is one."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def _folder_problem(folder: Path, exc: OSError) -> str:
    """Why ``folder`` could not be made or written in: a file in its place or on its way, or the OS's reason."""
    if (blocker := blocking_file(folder)) is not None:
        return f"{blocker} is a file, not a folder"
    return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc.strerror or exc)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOCK_FILE = ".diffmia.lock"


@contextlib.contextmanager
def exclusive_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold ``folder`` (created if needed) for the ``with`` block, or fail at once if another holder has it.

    The lock is ``flock(2)`` on ``folder/.diffmia.lock``, into which the holder writes its pid, host and start time
    for the message a second holder gets: a DiffmiaError naming ``what`` (e.g. "fine-tune folder") and the holder.
    The operating system releases it when the block ends or the process dies, however (SIGKILL included), so a
    crash never leaves a stale lock. A second ``with`` in the same process is refused too. Locks on network file
    systems are only as good as the file system's flock.
    """
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover - the one place that says so
        raise DiffmiaError(f"cannot lock {what} {folder}: diffmia's locks need fcntl (Linux or macOS)")
    make_folder(folder, what)
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise DiffmiaError(f"cannot lock {what} {folder}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise DiffmiaError(
                f"{what} {folder} is in use by {holder}; wait for it to finish or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays (deleting it would race a newcomer); only a holder fills it
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock whose file is open as ``fd``, as its file says."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {int(info['pid'])} on {info['host']} (since {info['started']})"
    except (OSError, ValueError, TypeError, KeyError):  # the holder is between taking the lock and writing its name
        return "another process"


def read_text(path: str | Path, error: type[DiffmiaError] = DiffmiaError, what: str = "") -> str:
    """A UTF-8 text file's contents, newlines as they are; a missing, unreadable or non-UTF-8 file is one ``error``
    naming ``what`` (e.g. "config file") and the path, and saying what to do."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{name} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8") from None
    except FileNotFoundError:
        raise error(f"{name} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {name}: {exc.strerror or exc}") from None


def write_json(path: str | Path, payload: Any) -> None:
    """``payload`` as indented UTF-8 JSON, atomically; NaN and infinity are refused, as strict JSON readers would."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def weights_digest(folder: Path) -> str:
    """Content hash of a local model folder's weights and configuration, or of one weights file (its name and
    content: the same digest as a folder holding that file alone).

    Reading gigabytes of weights is slow, so the hash is remembered for as long as no weight file's name, size
    or modification time changes: an audit asks for the same model's fingerprint many times.
    """
    if Path(folder).is_file():  # a single-file LoRA: that file alone, whatever lies beside it
        path, stat = Path(folder).resolve(), Path(folder).stat()
        return _content_digest(str(path.parent), ((path.name, stat.st_size, stat.st_mtime_ns),))
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
