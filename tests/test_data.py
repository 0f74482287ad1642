"""Image folders: the metadata convention, and every problem reported at once before any model runs."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diffmia.cli import main
from diffmia.data import load_image_folder
from diffmia.errors import DataError


def _folder(tmp_path, records, images=None, fmt="jsonl"):
    (tmp_path / "img").mkdir(parents=True, exist_ok=True)
    for name in images if images is not None else [r["file_name"] for r in records]:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name)
    if fmt == "jsonl":
        (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        keys = list(records[0])
        rows = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in records]
        (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_jsonl_and_csv_folders_load_the_same(tmp_path):
    records = [
        {"file_name": "img/a.png", "caption": "a cat", "id": "a", "split": "x"},
        {"file_name": "img/b.png", "caption": "a dog", "id": "b", "split": "y"},
    ]
    jsonl = load_image_folder(_folder(tmp_path / "j", records), require_captions=True)
    csv = load_image_folder(_folder(tmp_path / "c", records, fmt="csv"), require_captions=True)
    for folder in (jsonl, csv):
        assert [(s.id, s.caption, s.image_path.name) for s in folder.samples] == [
            ("a", "a cat", "a.png"),
            ("b", "a dog", "b.png"),
        ]
        assert folder.extra["b"] == {"split": "y"}


def test_text_column_and_ids_default_to_file_names(tmp_path):
    folder = load_image_folder(_folder(tmp_path, [{"file_name": "img/a.png", "text": "hello"}]))
    assert (folder.samples[0].id, folder.samples[0].caption) == ("img/a.png", "hello")


def test_every_problem_is_named_at_once(tmp_path):
    records = [
        {"file_name": "img/a.png", "caption": "x"},
        {"file_name": "img/a.png", "caption": "y"},
        {"file_name": "img/missing.png", "caption": "z"},
        {"file_name": "img/cut.png", "caption": "w"},
    ]
    _folder(tmp_path, records, images=["img/a.png", "img/cut.png"])
    data = (tmp_path / "img" / "cut.png").read_bytes()
    (tmp_path / "img" / "cut.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    with pytest.raises(DataError) as error:
        load_image_folder(tmp_path)
    message = str(error.value)
    assert "duplicate file_name: img/a.png" in message
    assert "img/missing.png (missing)" in message
    assert "img/cut.png (cannot be decoded: " in message


def test_captions_required(tmp_path):
    _folder(tmp_path, [{"file_name": "img/a.png"}, {"file_name": "img/b.png"}])
    assert load_image_folder(tmp_path).samples[0].caption is None
    with pytest.raises(DataError, match=r"no caption column \(expected one of: caption, text\)"):
        load_image_folder(tmp_path, require_captions=True)
    _folder(tmp_path, [{"file_name": "img/a.png", "caption": "x"}, {"file_name": "img/b.png", "caption": ""}])
    with pytest.raises(DataError, match=r"no caption for: img/b\.png"):
        load_image_folder(tmp_path, require_captions=True)


def test_bad_metadata(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"neither metadata\.jsonl nor metadata\.csv"):
        load_image_folder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n{oops\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_image_folder(tmp_path)


def _one_error_line(err):
    """The single line a DiffmiaError leaves on stderr: no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


def test_a_decompression_bomb_in_a_folder_is_named_not_decoded(tmp_path, bomb_png, capsys):
    records = [{"file_name": "img/a.png", "caption": "x", "label": 1}, {"file_name": "img/bomb.png", "caption": "y"}]
    _folder(tmp_path / "data", records, images=["img/a.png"])
    bomb_png(tmp_path / "data" / "img" / "bomb.png")
    with pytest.raises(DataError, match=r"bad images: img/bomb\.png \(declares .*decompression bomb"):
        load_image_folder(tmp_path / "data")
    out = tmp_path / "classifier.json"
    assert main(["lab", "classifier", str(tmp_path / "data"), str(out), "--split", "all"]) == 2
    assert "img/bomb.png (declares more than" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_metadata_that_is_not_utf8_is_named(tmp_path, fmt, capsys):
    _folder(tmp_path, [{"file_name": "img/a.png", "caption": "cafe"}], fmt=fmt)
    metadata = tmp_path / f"metadata.{fmt}"
    metadata.write_bytes(metadata.read_bytes().replace(b"cafe", "caf\u00e9".encode("latin-1")))  # not UTF-8
    with pytest.raises(DataError, match=rf"metadata\.{fmt} is not UTF-8 text \(byte \d+ cannot be decoded\)"):
        load_image_folder(tmp_path)
    assert main(["lab", "classifier", str(tmp_path), str(tmp_path / "c.json")]) == 2
    assert "is not UTF-8 text" in _one_error_line(capsys.readouterr().err)


def test_a_file_name_that_is_not_text_is_named(tmp_path, capsys):
    records = [{"file_name": "img/a.png"}, {"file_name": 7}, {"file_name": ["img/a.png"]}, {"file_name": {"x": 1}}]
    _folder(tmp_path, records, images=["img/a.png"])
    with pytest.raises(DataError, match=r'file_name is not text in records: 2 \(7\), 3 \(\["img/a.png"\]\), 4 '):
        load_image_folder(tmp_path)
    assert main(["lab", "classifier", str(tmp_path), str(tmp_path / "c.json")]) == 2
    assert "file_name is not text" in _one_error_line(capsys.readouterr().err)
