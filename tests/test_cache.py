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
    for change in ({"prompt": "a one"}, {"seed": 2}, {"steps": 10}, {"guidance": 3.0}, {"negative_prompt": "x"},
                   {"width": 64}, {"height": 64}, {"strength": 0.5}):  # fmt: skip
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
