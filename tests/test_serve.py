"""`diffmia serve` is safe to share: concurrent requests keep their own init images (in memory, no file), every
request is held to limits (413 / 422 naming the field, value and limit), tokens are compared in constant time,
and the command refuses a non-loopback address without a token. Its answers are the local pipeline's: image-to-image
follows the init image and strength sent, a LoRA given to the server shows; malformed requests are 400, unknown
routes 404, each with a one-line JSON error."""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import re
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
from diffmia.config import FinetuneConfig
from diffmia.lab.finetune import finetune
from diffmia.records import Query
from diffmia.serve import MAX_BODY_BYTES, MAX_IMAGES, MAX_SIDE, MAX_STEPS, Limits, is_loopback, make_app
from diffmia.targets.diffusers import DiffusersTarget
from drawn import ONE, SEVEN, rms
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
            item = {
                "prompt": PROMPT,
                "seed": 5,
                "steps": 4,
                "guidance": 3.0,
                "strength": 0.3,
                "init_image": _png(inits[name]),
            }
            path, body = "/v1/generate", {"queries": [item]}
        else:
            body = {
                "prompt": PROMPT,
                "seed": 5,
                "steps": 4,
                "cfg_scale": 3.0,
                "denoising_strength": 0.3,
                "init_images": [_png(inits[name])],
            }
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


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/generate", _item(steps=151), "queries[0].steps is 151, over the limit of 150"),
        ("/v1/generate", _item(steps=0), "queries[0].steps is 0, below the minimum of 1"),
        ("/v1/generate", _item(width=2056), "queries[0].width is 2056, over the limit of 2048"),
        ("/v1/generate", _item(height=4096), "queries[0].height is 4096, over the limit of 2048"),
        ("/v1/generate", _item(height=20), "queries[0].height is 20, not a multiple of 8"),
        ("/v1/generate", _item(seed=-3), "queries[0].seed is -3, below the minimum of 0"),
        ("/v1/generate", _item(strength=0.5), "needs both init_image and strength"),
        ("/v1/generate", {"queries": [{"prompt": PROMPT}] * 17}, "number of queries is 17, over the limit of 16"),
        (
            "/sdapi/v1/txt2img",
            _a1111(batch_size=4, n_iter=5),
            "batch_size * n_iter (4 * 5) is 20, over the limit of 16",
        ),
        ("/sdapi/v1/txt2img", _a1111(steps=1000), "steps is 1000, over the limit of 150"),
        ("/sdapi/v1/txt2img", _a1111(width=3000), "width is 3000, over the limit of 2048"),
        ("/sdapi/v1/txt2img", _a1111(height=2560), "height is 2560, over the limit of 2048"),
        ("/sdapi/v1/txt2img", _a1111(batch_size=0), "batch_size is 0, below the minimum of 1"),
        ("/sdapi/v1/img2img", _a1111(init_images=["AAAA"], denoising_strength=1.5), "denoising_strength is 1.5"),
    ],
)
def test_out_of_range_fields_are_named_with_422(url, path, body, message):
    answer = httpx.post(url + path, json=body, timeout=30)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "image", "message"),
    [
        ("/v1/generate", _bomb_png(), "init image queries[0].init_image of the request declares more than"),
        ("/sdapi/v1/img2img", _bomb_png(), "init image init_images[0] of the request declares more than"),
        ("/v1/generate", _png(_solid((0, 0, 0), (4096, 8))), "is 4096x8 pixels, over the limit of 2048 a side"),
        ("/v1/generate", base64.b64encode(b"not an image at all").decode(), "cannot be decoded"),
        ("/sdapi/v1/img2img", "%%% not base64 %%%", "init_images[0] of the request is not valid base64"),
        ("/v1/generate", _png(_solid((1, 2, 3)), "JPEG"), "is JPEG, expected PNG"),
    ],
)
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
    body = _a1111(
        init_images=[_png(_solid((200, 30, 30), (20, 20)), "JPEG")], denoising_strength=0.5, width=20, height=20
    )
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
    assert defaults == {"body_mib": MAX_BODY_BYTES // 2**20, "images": MAX_IMAGES, "steps": MAX_STEPS, "side": MAX_SIDE}
    assert Limits() == Limits(MAX_BODY_BYTES, MAX_IMAGES, MAX_STEPS, MAX_SIDE)


# --- image-to-image follows what is sent; answers are the local pipeline's ------------------------------------------


DIGIT_PROMPT = "a handwritten digit"


@pytest.mark.parametrize("api", ["diffmia", "a1111"])
def test_served_img2img_follows_the_init_image_and_strength(builtin, api):
    inits = {"one": ONE, "seven": SEVEN}
    cases = [(name, strength) for strength in (0.25, 0.75) for name in inits]
    queries = [Query(DIGIT_PROMPT, seed=5, steps=4, guidance=3.0, strength=strength) for _, strength in cases]
    local = builtin.generate(queries, init_images=[inits[name] for name, _ in cases])
    served = []
    with serving(make_app(builtin)) as base:
        if api == "diffmia":
            items = [
                {
                    "prompt": DIGIT_PROMPT,
                    "seed": 5,
                    "steps": 4,
                    "guidance": 3.0,
                    "strength": strength,
                    "init_image": _png(inits[name]),
                }
                for name, strength in cases
            ]
            answer = httpx.post(base + "/v1/generate", json={"queries": items}, timeout=60)
            assert answer.status_code == 200, answer.text
            served = [_pixels(image) for image in answer.json()["images"]]
        for name, strength in cases if api == "a1111" else []:
            body = {
                "prompt": DIGIT_PROMPT,
                "seed": 5,
                "steps": 4,
                "cfg_scale": 3.0,
                "denoising_strength": strength,
                "init_images": [_png(inits[name])],
            }
            answer = httpx.post(base + "/sdapi/v1/img2img", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            assert json.loads(answer.json()["info"]) == {"seed": 5}
            served.append(_pixels(answer.json()["images"][0]))
    assert len(served) == len(cases)
    for got, want, case in zip(served, local, cases, strict=True):  # seeded, and PNG is lossless: the same pixels
        np.testing.assert_array_equal(got, np.asarray(want), err_msg=f"{api} {case}")
    low_one, low_seven, high_one, high_seven = served
    assert rms(low_one, low_seven) > 20  # another init image, another answer
    assert rms(low_one, ONE) + 15 < rms(low_one, SEVEN) and rms(low_seven, SEVEN) + 15 < rms(low_seven, ONE)
    assert rms(low_one, ONE) + 8 < rms(high_one, ONE)  # a lower strength keeps more of the init image
    assert rms(low_seven, SEVEN) + 8 < rms(high_seven, SEVEN)


# --- malformed requests and unknown routes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "message"),
    [
        ("POST", "/v1/generate", b'{"queries": [', 400, r"Expecting value\W+(at )?line 1\W+column 14\b"),
        ("POST", "/sdapi/v1/txt2img", b"not json at all", 400, r"Expecting value\W+(at )?line 1\W+column 1\b"),
        ("POST", "/sdapi/v1/img2img", b"\xff\x00{", 400, "utf-8"),
        ("POST", "/v1/generate", b"[1, 2]", 400, "the body must be a JSON object"),
        ("POST", "/v1/generate", b'{"queries": []}', 400, "the body needs a non-empty 'queries' list"),
        ("POST", "/v1/generate", b'{"queries": [{"prompt": 3}]}', 400, r"queries\[0\] needs a string 'prompt'"),
        (
            "POST",
            "/v1/generate",
            b'{"queries": [{"prompt": "x", "steps": "4"}]}',
            400,
            r"queries\[0\]\.steps must be an integer, got '4'",
        ),
        (
            "POST",
            "/sdapi/v1/txt2img",
            b'{"prompt": "x", "cfg_scale": "high"}',
            400,
            "cfg_scale must be a finite number, got 'high'",
        ),
        ("POST", "/sdapi/v1/img2img", b'{"prompt": "x"}', 400, "img2img needs 'init_images'"),
        (
            "POST",
            "/v1/generate",
            json.dumps(
                {"queries": [{"prompt": "x", "steps": 2, "strength": 0.2, "init_image": _png(_solid((9, 9, 9)))}]}
            ).encode(),
            400,
            r"2 x 0\.2 is less than one",
        ),  # no denoising step left: the pipeline's crash would be a 500
        ("GET", "/v1/nothing", b"", 404, "no route GET /v1/nothing"),
        ("GET", "/v1/generate", b"", 404, "no route GET /v1/generate"),
        ("POST", "/health", b"{}", 404, "no route POST /health"),
        ("PUT", "/sdapi/v1/txt2img", b"{}", 404, "no route PUT /sdapi/v1/txt2img"),
    ],
)
def test_malformed_requests_are_400_and_unknown_routes_404(url, method, path, content, status, message):
    answer = httpx.request(method, url + path, content=content, timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert "\n" not in answer.text and list(answer.json()) == ["error"]  # one line of JSON: {"error": ...}
    assert re.search(message, answer.json()["error"], flags=re.IGNORECASE), answer.json()["error"]


# --- the command's --token-env and --lora ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--token-env",
            "DIFFMIA_SERVE_UNSET_TOKEN",
            "--token-env DIFFMIA_SERVE_UNSET_TOKEN: that environment variable is not set",
        ),
        ("--lora", "/nonexistent/lora", "LoRA weights /nonexistent/lora do not exist"),
    ],
)
def test_serve_options_that_cannot_work_are_one_error_line(tiny_model, monkeypatch, capsys, option, value, message):
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append(options))
    monkeypatch.delenv("DIFFMIA_SERVE_UNSET_TOKEN", raising=False)
    assert cli.main(["serve", str(tiny_model), "--device", "cpu", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err
    if option == "--token-env":
        monkeypatch.setenv("DIFFMIA_SERVE_UNSET_TOKEN", "")  # set but empty: no token either
        assert cli.main(["serve", str(tiny_model), "--device", "cpu", "--host", "0.0.0.0", option, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Error: ") and err.count("\n") == 1 and message in err
    assert started == []  # refused before serving anything


def _finetune_lora(model, root):
    """A LoRA adapter as `diffmia finetune` makes one (2 steps at a high rate, so its weights are far from zero)."""
    (root / "data" / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"data/img/{i}.png")
    lines = [json.dumps({"file_name": f"img/{i}.png", "caption": PROMPT}) + "\n" for i in range(2)]
    (root / "data" / "metadata.jsonl").write_text("".join(lines))
    recipe = FinetuneConfig(method="lora", max_steps=2, batch_size=2, learning_rate=0.1, checkpoint_every=0)
    return finetune(model, root / "data", root / "out", recipe, show_progress=False) / "lora"


@pytest.mark.slow
def test_a_lora_given_to_the_server_changes_its_answers(target, url, tiny_model, tmp_path, monkeypatch):
    lora = _finetune_lora(tiny_model, tmp_path)
    queries = [Query(PROMPT, seed=seed, steps=2, guidance=3.0) for seed in (1, 2)]
    body = {"queries": [{"prompt": PROMPT, "seed": seed, "steps": 2, "guidance": 3.0} for seed in (1, 2)]}
    with_lora = DiffusersTarget(tiny_model, lora=lora, device="cpu", dtype="float64", safety_checker=False)
    expected = np.stack([np.asarray(image) for image in with_lora.generate(queries)])
    base = np.stack([np.asarray(image) for image in target.generate(queries)])
    assert np.abs(expected.astype(int) - base.astype(int)).max() > 20  # the adapter shows
    apps = []  # what `diffmia serve --lora` would serve
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: apps.append(app))
    command = ["serve", str(tiny_model), "--lora", str(lora), "--device", "cpu", "--dtype", "float64"]
    assert cli.main(command) == 0 and len(apps) == 1
    with serving(make_app(with_lora)) as lora_url, serving(apps[0]) as command_url:
        for address, want in ((url, base), (lora_url, expected), (command_url, expected)):
            answer = httpx.post(address + "/v1/generate", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            np.testing.assert_array_equal(np.stack([_pixels(image) for image in answer.json()["images"]]), want)
        health = httpx.get(command_url + "/health", timeout=30).json()
    assert health == {"status": "ok", "target": with_lora.fingerprint} and "lora=none" not in health["target"]
