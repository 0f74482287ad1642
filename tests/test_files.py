"""Files: atomic writes, strict JSON, and model folders named by their weights."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from diffmia.files import _content_digest, atomic_path, weights_digest, write_json


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
