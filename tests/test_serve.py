"""`diffmia serve` is safe to share: concurrent requests keep their own init images (in memory, no file), every
request is held to limits (413 / 422 naming the field, value and limit), tokens are compared in constant time,
and the command refuses a non-loopback address without a token."""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import struct
import tempfile
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from diffmia import cli
from diffmia.records import Query
from diffmia.serve import MAX_BODY_BYTES, MAX_IMAGES, MAX_SIDE, MAX_STEPS, Limits, is_loopback, make_app
from diffmia.targets.diffusers import DiffusersTarget
from loopback import serving

TOKEN_ENV, TOKEN = "DIFFMIA_SERVE_TEST_TOKEN", "an0ther-s3cret"
PROMPT = "a bold soft one"


class SlowTarget(DiffusersTarget):
    """The real pipeline, taking its time first: two requests are certainly in flight at once."""

    def generate(self, queries, init_images=None):
        time.sleep(0.4)
        return super().generate(queries, init_images)


def _png(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _solid(rgb, size=(16, 16)):
    return Image.new("RGB", size, rgb)


def _pixels(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _bomb_png(width=100_000, height=100_000):
    """A PNG whose header declares ``width`` x ``height`` 1-bit pixels, with a few bytes of data (a bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    data += chunk(b"IEND", b"")
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def target(tiny_model):
    return DiffusersTarget(tiny_model, device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def url(target):
    with serving(make_app(target)) as address:
        yield address


@pytest.mark.parametrize("api", ["diffmia", "a1111"])
def test_concurrent_img2img_requests_each_get_their_own_init_image(tiny_model, tmp_path, monkeypatch, api):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where any temporary file of the server would go
    target = SlowTarget(tiny_model, device="cpu", dtype="float64")
    inits = {"red": _solid((230, 20, 20)), "blue": _solid((20, 20, 230))}
    expected = {}
    for name, image in inits.items():  # what a local query with the init image in a file gives
        image.save(tmp_path / f"{name}.png")
        query = Query(PROMPT, seed=5, steps=4, guidance=3.0, init_image=tmp_path / f"{name}.png", strength=0.3)
        expected[name] = np.asarray(DiffusersTarget.generate(target, [query])[0])
    assert not np.array_equal(expected["red"], expected["blue"])
    answers, barrier = {}, threading.Barrier(2)

    def ask(base, name):
        if api == "diffmia":
            item = {"prompt": PROMPT, "seed": 5, "steps": 4, "guidance": 3.0, "strength": 0.3,
                    "init_image": _png(inits[name])}  # fmt: skip
            path, body = "/v1/generate", {"queries": [item]}
        else:
            body = {"prompt": PROMPT, "seed": 5, "steps": 4, "cfg_scale": 3.0, "denoising_strength": 0.3,
                    "init_images": [_png(inits[name])]}  # fmt: skip
            path = "/sdapi/v1/img2img"
        barrier.wait()
        answers[name] = httpx.post(base + path, json=body, timeout=60)

    with serving(make_app(target)) as base:
        threads = [threading.Thread(target=ask, args=(base, name)) for name in inits]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    for name in inits:
        answer = answers[name]
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(_pixels(answer.json()["images"][0]), expected[name], err_msg=name)
        if api == "a1111":
            assert "init_images" not in answer.json()["parameters"]  # the upload is not echoed back
    red, blue = (expected[name].astype(float).mean(axis=(0, 1)) for name in ("red", "blue"))
    assert red[0] - red[2] > blue[0] - blue[2]  # each answer follows its own init's colour
    assert list(temp.rglob("*")) == []  # nothing was written to a temporary directory


def test_oversized_bodies_are_refused_with_413(target):
    with serving(make_app(target, limits=Limits(body_bytes=1000))) as base:
        answer = httpx.post(base + "/v1/generate", content=b"x" * 1001, timeout=30)
        assert answer.status_code == 413 and "limit of 1,000 bytes" in answer.json()["error"]
        chunked = httpx.post(base + "/v1/generate", content=iter([b"x" * 600, b"x" * 600]), timeout=30)
        assert chunked.status_code == 413  # no declared length: counted as it arrives
        small = {"queries": [{"prompt": PROMPT, "steps": 1}]}
        assert httpx.post(base + "/v1/generate", json=small, timeout=30).status_code == 200


def test_the_default_body_limit_is_32_mib(url):
    answer = httpx.post(url + "/v1/generate", content=b" " * (MAX_BODY_BYTES + 1), timeout=30)
    assert answer.status_code == 413 and f"{MAX_BODY_BYTES:,} bytes" in answer.json()["error"]


def _item(**fields):
    return {"queries": [{"prompt": PROMPT, "steps": 2, **fields}]}


def _a1111(**fields):
    return {"prompt": PROMPT, "steps": 2, **fields}


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v1/generate", _item(steps=151), "queries[0].steps is 151, over the limit of 150"),
    ("/v1/generate", _item(steps=0), "queries[0].steps is 0, below the minimum of 1"),
    ("/v1/generate", _item(width=2056), "queries[0].width is 2056, over the limit of 2048"),
    ("/v1/generate", _item(height=4096), "queries[0].height is 4096, over the limit of 2048"),
    ("/v1/generate", _item(height=20), "queries[0].height is 20, not a multiple of 8"),
    ("/v1/generate", _item(seed=-3), "queries[0].seed is -3, below the minimum of 0"),
    ("/v1/generate", _item(strength=0.5), "needs both init_image and strength"),
    ("/v1/generate", {"queries": [{"prompt": PROMPT}] * 17}, "number of queries is 17, over the limit of 16"),
    ("/sdapi/v1/txt2img", _a1111(batch_size=4, n_iter=5), "batch_size * n_iter (4 * 5) is 20, over the limit of 16"),
    ("/sdapi/v1/txt2img", _a1111(steps=1000), "steps is 1000, over the limit of 150"),
    ("/sdapi/v1/txt2img", _a1111(width=3000), "width is 3000, over the limit of 2048"),
    ("/sdapi/v1/txt2img", _a1111(height=2560), "height is 2560, over the limit of 2048"),
    ("/sdapi/v1/txt2img", _a1111(batch_size=0), "batch_size is 0, below the minimum of 1"),
    ("/sdapi/v1/img2img", _a1111(init_images=["AAAA"], denoising_strength=1.5), "denoising_strength is 1.5"),
])  # fmt: skip
def test_out_of_range_fields_are_named_with_422(url, path, body, message):
    answer = httpx.post(url + path, json=body, timeout=30)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["error"]


@pytest.mark.parametrize(("path", "image", "message"), [
    ("/v1/generate", _bomb_png(), "init image queries[0].init_image of the request declares more than"),
    ("/sdapi/v1/img2img", _bomb_png(), "init image init_images[0] of the request declares more than"),
    ("/v1/generate", _png(_solid((0, 0, 0), (4096, 8))), "is 4096x8 pixels, over the limit of 2048 a side"),
    ("/v1/generate", base64.b64encode(b"not an image at all").decode(), "cannot be decoded"),
    ("/sdapi/v1/img2img", "%%% not base64 %%%", "init_images[0] of the request is not valid base64"),
    ("/v1/generate", _png(_solid((1, 2, 3)), "JPEG"), "is JPEG, expected PNG"),
])  # fmt: skip
def test_bad_init_images_are_422(url, path, image, message):
    if path == "/v1/generate":
        body = _item(init_image=image, strength=0.5)
    else:
        body = _a1111(init_images=[image], denoising_strength=0.5)
    answer = httpx.post(url + path, json=body, timeout=30)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["error"]


def test_a1111_img2img_takes_any_image_format_and_size(url):
    """As AUTOMATIC1111 does; its clients send the init image's size, not always a multiple of 8."""
    body = _a1111(init_images=[_png(_solid((200, 30, 30), (20, 20)), "JPEG")], denoising_strength=0.5, width=20,
                  height=20)  # fmt: skip
    answer = httpx.post(url + "/sdapi/v1/img2img", json=body, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1


def test_tokens(target, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with serving(make_app(target, token_env=TOKEN_ENV)) as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            assert httpx.get(base + "/health", headers=headers).status_code == 401
        assert httpx.get(base + "/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        monkeypatch.setenv(TOKEN_ENV, "")  # an emptied token admits nobody
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}"}):
            assert httpx.get(base + "/health", headers=headers).status_code == 401


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "localhost", "LOCALHOST", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", ""]))


def test_serve_refuses_a_public_address_without_a_token(tiny_model, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append(options))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert cli.main(["serve", str(tiny_model), "--host", "0.0.0.0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: --host 0.0.0.0 is not a loopback address") and "--insecure" in err
    assert err.count("\n") == 1 and started == []  # refused before binding anything

    assert cli.main(["serve", str(tiny_model), "--host", "0.0.0.0", "--device", "cpu", "--insecure"]) == 0
    assert "without a token" in capsys.readouterr().err
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert cli.main(["serve", str(tiny_model), "--host", "0.0.0.0", "--device", "cpu", "--token-env", TOKEN_ENV]) == 0
    assert cli.main(["serve", str(tiny_model), "--device", "cpu"]) == 0  # loopback needs neither
    assert [options["host"] for options in started] == ["0.0.0.0", "0.0.0.0", "127.0.0.1"]
    assert TOKEN not in json.dumps(started) and os.environ[TOKEN_ENV] == TOKEN


def test_cli_limit_defaults_are_the_servers():
    parameters = inspect.signature(cli.serve).parameters
    defaults = {name: parameters[f"max_{name}"].default for name in ("body_mib", "images", "steps", "side")}
    assert defaults == {"body_mib": MAX_BODY_BYTES // 2**20, "images": MAX_IMAGES, "steps": MAX_STEPS,
                        "side": MAX_SIDE}  # fmt: skip
    assert Limits() == Limits(MAX_BODY_BYTES, MAX_IMAGES, MAX_STEPS, MAX_SIDE)
