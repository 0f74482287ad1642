"""The generation cache and query keys: content addressing, atomic entries, verification."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from diffmia.cache import GenerationCache
from diffmia.records import Query


def _image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))


def test_query_key_covers_every_field_but_the_sample(tmp_path):
    base = Query("a seven", seed=1)
    keys = {base.key("t")}
    for change in (
        {"prompt": "a one"},
        {"seed": 2},
        {"steps": 10},
        {"guidance": 3.0},
        {"negative_prompt": "x"},
        {"width": 64},
        {"height": 64},
        {"strength": 0.5},
    ):
        keys.add(dataclasses.replace(base, **change).key("t"))
    keys.add(base.key("other target"))
    assert len(keys) == 10
    assert dataclasses.replace(base, sample_id="s1").key("t") == base.key("t")
    _image(0).save(tmp_path / "a.png")
    _image(1).save(tmp_path / "b.png")
    a = Query("p", 1, init_image=tmp_path / "a.png", strength=0.5)
    b = Query("p", 1, init_image=tmp_path / "b.png", strength=0.5)
    assert a.mode == "img2img" and base.mode == "text2img"
    assert a.key("t") != b.key("t")  # the init image counts by content
    (tmp_path / "c.png").write_bytes((tmp_path / "a.png").read_bytes())
    assert dataclasses.replace(a, init_image=tmp_path / "c.png").key("t") == a.key("t")


def test_round_trip_and_incomplete_entries(tmp_path):
    cache = GenerationCache(tmp_path)
    query = Query("a seven", seed=3, sample_id="s")
    key = query.key("target")
    assert cache.get(key) is None and key not in cache
    cache.put(key, _image(3), query, "target")
    np.testing.assert_array_equal(np.asarray(cache.get(key)), np.asarray(_image(3)))
    png, sidecar = tmp_path / key[:2] / f"{key}.png", tmp_path / key[:2] / f"{key}.json"
    sidecar.unlink()  # as if killed between the image and its sidecar
    assert cache.get(key) is None
    assert [p.problem for p in cache.verify()[1]] == ["image without sidecar (an interrupted write; harmless)"]
    cache.put(key, _image(3), query, "target")
    assert cache.verify() == (1, [])
    png.write_bytes(png.read_bytes()[:-4] + b"oops")
    assert [p.problem for p in cache.verify()[1]] == ["image does not match its recorded hash"]
    png.unlink()
    assert [p.problem for p in cache.verify()[1]] == ["image missing"]


def test_cache_verify_command(tmp_path, capsys):
    from diffmia.cli import main

    cache = GenerationCache(tmp_path)
    query = Query("p", seed=1)
    cache.put(query.key("t"), _image(1), query, "t")
    assert main(["cache", "verify", str(tmp_path)]) == 0
    assert "1 entries, 0 damaged" in capsys.readouterr().out
    next(tmp_path.glob("*/*.png")).unlink()
    assert main(["cache", "verify", str(tmp_path)]) == 1
    assert "image missing" in capsys.readouterr().out
    assert main(["cache", "verify", str(tmp_path / "nope")]) == 2


class _CountingTarget:
    """A target drawing one seeded noise image per query, counting what it was asked."""

    fingerprint = "counting"

    def __init__(self):
        self.asked = 0

    def generate(self, queries):
        self.asked += len(queries)
        return [_image(q.seed) for q in queries]


def test_damaged_entries_count_as_missing_and_are_generated_again(tmp_path, bomb_png):
    from diffmia.execution import generate

    cache, target = GenerationCache(tmp_path), _CountingTarget()
    queries = [Query("p", seed=s) for s in range(4)]
    generate(target, queries, cache, show_progress=False)
    keys = [q.key(target.fingerprint) for q in queries]
    pngs = [cache.image_path(k) for k in keys]
    pngs[0].unlink()  # image gone, sidecar left
    pngs[1].write_bytes(b"not a png")  # image overwritten
    bomb_png(pngs[2])  # image replaced by a decompression bomb
    pngs[3].with_suffix(".json").write_text("[]")  # sidecar not an object
    problems = {p.key: p.problem for p in cache.verify()[1]}
    assert [problems[k] for k in keys] == [
        "image missing",
        "image does not match its recorded hash",
        "image does not match its recorded hash",
        "unreadable sidecar (not a JSON object with png_sha256)",
    ]
    assert all(cache.get(k) is None and k not in cache for k in keys)
    images = generate(target, queries, cache, show_progress=False)
    assert target.asked == 8  # every damaged entry generated again, none read
    assert cache.verify() == (4, [])
    for query, image in zip(queries, images, strict=True):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(_image(query.seed)))


def test_an_entry_whose_recorded_image_cannot_be_decoded_is_missing(tmp_path, bomb_png, capsys):
    """Even when the sidecar's hash matches the bytes (a hand-made entry), an image that is no PNG, or a bomb, is
    never decoded into memory: the entry is missing, and verify names it."""
    import hashlib
    import json

    from diffmia.cli import main

    cache = GenerationCache(tmp_path)
    query = Query("p", seed=1)
    key = query.key("t")
    cache.put(key, _image(1), query, "t")
    png, sidecar = cache.image_path(key), cache.image_path(key).with_suffix(".json")
    for damage, problem in (
        (lambda: bomb_png(png), "decompression bomb"),
        (lambda: _image(1).save(png, "BMP"), "image is BMP, expected PNG"),
    ):
        damage()
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**meta, "png_sha256": hashlib.sha256(png.read_bytes()).hexdigest()}))
        assert cache.get(key) is None
        assert problem in cache.verify()[1][0].problem
        assert main(["cache", "verify", str(tmp_path)]) == 1
        assert problem in capsys.readouterr().out


def test_an_unreadable_sidecar_is_reported_by_the_command(tmp_path, capsys):
    from diffmia.cli import main

    cache = GenerationCache(tmp_path)
    query = Query("p", seed=1)
    cache.put(query.key("t"), _image(1), query, "t")
    next(tmp_path.glob("*/*.json")).write_text("[]")
    assert main(["cache", "verify", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "unreadable sidecar (not a JSON object with png_sha256)" in captured.out and not captured.err
