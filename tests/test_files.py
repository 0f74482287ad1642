"""Files: atomic writes, strict JSON, and model folders named by their weights."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from diffmia.errors import DiffmiaError
from diffmia.files import _content_digest, atomic_path, exclusive_lock, make_folder, weights_digest, write_json


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def interrupted_write():
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_write_json_is_indented_utf8_and_refuses_nan(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"name": "Fréchet", "n": [1, 2]})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and '\n  "name"' in text and json.loads(text) == {"name": "Fréchet", "n": [1, 2]}
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(path, {"auc": float("nan")})
    assert json.loads(path.read_text(encoding="utf-8"))["n"] == [1, 2]  # the old file survives the refusal
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_weights_digest_is_remembered_until_a_weight_file_changes(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"weights-1")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not hashed")
    expected = hashlib.sha256(b"config.json{}unet/model.safetensorsweights-1").hexdigest()[:16]
    assert weights_digest(tmp_path) == expected
    hits = _content_digest.cache_info().hits
    assert weights_digest(tmp_path) == expected and _content_digest.cache_info().hits == hits + 1  # not read again
    weights = tmp_path / "unet" / "model.safetensors"
    weights.write_bytes(b"weights-2")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert weights_digest(tmp_path) == hashlib.sha256(b"config.json{}unet/model.safetensorsweights-2").hexdigest()[:16]


def test_atomic_path_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert synced == [("file", False), ("folder", True)]  # the content before its name, the name after


def test_a_folder_that_cannot_be_made_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DiffmiaError, match=r"cannot write .*file/sub/out\.json: .*file is a file, not a folder"):
        write_json(tmp_path / "file" / "sub" / "out.json", {})
    with pytest.raises(DiffmiaError, match=r"cannot create output folder .*file/sub: .*file is a file, not a folder"):
        make_folder(tmp_path / "file" / "sub", "output folder")
    with (
        pytest.raises(DiffmiaError, match=r"cannot create run directory .*file: .*file is a file, not a folder"),
        exclusive_lock(tmp_path / "file", "run directory"),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


HOLD = """
import sys, time
from diffmia.files import exclusive_lock
with exclusive_lock(sys.argv[1], "test folder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    """A process holding ``folder``'s lock until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_a_second_holder_is_refused_at_once_and_told_who_holds_the_lock(tmp_path):
    folder = tmp_path / "models" / "target"
    process = _holder(folder)
    try:
        began = time.monotonic()
        busy = rf"test folder {folder} is in use by process {process.pid} on \S+ \(since \d{{4}}-\d\d-\d\d"
        with pytest.raises(DiffmiaError, match=busy), exclusive_lock(folder, "test folder"):
            pass
        assert time.monotonic() - began < 1  # not waiting
    finally:
        process.kill()  # SIGKILL: the lock dies with its holder
        process.wait()
    with (
        exclusive_lock(folder, "test folder"),
        pytest.raises(DiffmiaError, match=rf"in use by process {os.getpid()} "),  # the same process, again
        exclusive_lock(folder, "test folder"),
    ):
        pass
    with exclusive_lock(folder, "test folder"):  # released at the end of the block
        pass


def test_a_lock_is_released_when_its_block_fails(tmp_path):
    with pytest.raises(RuntimeError), exclusive_lock(tmp_path, "test folder"):
        raise RuntimeError("crash")
    with exclusive_lock(tmp_path, "test folder"):
        assert json.loads((tmp_path / ".diffmia.lock").read_text())["pid"] == os.getpid()
    assert (tmp_path / ".diffmia.lock").read_text() == ""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    process = _holder(tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((tmp_path / ".diffmia.lock").read_text())["pid"] == process.pid  # its note stays behind
    with exclusive_lock(tmp_path, "test folder"):
        pass
