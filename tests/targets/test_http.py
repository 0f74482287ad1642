"""The HTTP target against real servers on loopback (`diffmia serve`'s app, fake AUTOMATIC1111 and scripted
endpoints): both wire formats (text- and image-to-image), faults, deadlines, tokens, the probe, the size sent."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import random
import re
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from diffmia.cache import GenerationCache
from diffmia.config import dump_config, parse_config
from diffmia.errors import ConfigError, TargetError
from diffmia.execution import generate
from diffmia.records import Query
from diffmia.serve import make_app
from diffmia.targets import make_target, probe_target
from diffmia.targets.diffusers import DiffusersTarget
from diffmia.targets.http import HTTPTarget
from drawn import ONE, SEVEN, rms
from loopback import serving

CAPTIONS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]
TOKEN_ENV, TOKEN = "DIFFMIA_TEST_TOKEN", "s3cret-token-value"
FAULT_SEED = 0


def faulty(app, faults):
    """Wrap an ASGI app: the first requests get the listed faults (500, 429, 'hang', 'count', 'garbage')."""
    remaining = list(faults)

    async def wrapped(scope, receive, send):
        if scope["type"] != "http" or not remaining:
            await app(scope, receive, send)
            return
        fault = remaining.pop(0)
        if fault == "hang":
            await asyncio.sleep(1.5)
        payload, status, headers = {"error": "injected"}, 200, []
        if fault in (500, 429):
            status = fault
            headers = [(b"retry-after", b"0.05")] if fault == 429 else []
        elif fault == "count":
            payload = {"images": []}
        elif fault == "garbage":
            payload = {"images": ["bm90IGFuIGltYWdl"] * 3}  # "not an image", once per query
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _queries(n=3):
    return [Query(CAPTIONS[i % 2], seed=7 + i, steps=2, guidance=3.0) for i in range(n)]


def _pixels(images):
    return np.stack([np.asarray(im) for im in images])


@pytest.fixture(scope="module")
def local(tiny_model):
    target = DiffusersTarget(tiny_model, device="cpu", dtype="float64")
    return target, _pixels(target.generate(_queries()))


@pytest.mark.parametrize("api", ["diffmia", "a1111"])
def test_both_wire_formats_give_the_local_images(local, api):
    target, expected = local
    with serving(make_app(target)) as url:
        remote = HTTPTarget(url, api=api, batch_size=2, width=16, height=16)  # the tiny model's size
        np.testing.assert_array_equal(_pixels(remote.generate(_queries())), expected)


@pytest.mark.parametrize("api", ["diffmia", "a1111"])
def test_img2img_in_both_wire_formats_gives_the_local_images(builtin, tmp_path, api):
    """Init images travel to the server and back (base64 PNG, lossless): the images of the local pipeline, which
    follow their init image and strength."""
    ONE.save(tmp_path / "one.png")
    SEVEN.save(tmp_path / "seven.png")
    queries = [
        Query(
            "a handwritten digit", seed=5, steps=4, guidance=3.0, init_image=tmp_path / f"{name}.png", strength=strength
        )
        for strength in (0.25, 0.75)
        for name in ("one", "seven")
    ]
    expected = _pixels(builtin.generate(queries))
    with serving(make_app(builtin)) as url:
        remote = HTTPTarget(url, api=api, batch_size=4, concurrency=1)
        images = remote.generate(queries)
    assert remote.requests == (1 if api == "diffmia" else 4)
    np.testing.assert_array_equal(_pixels(images), expected)
    low_one, low_seven, high_one, high_seven = images
    assert rms(low_one, low_seven) > 20  # another init image, another answer
    assert rms(low_one, ONE) + 15 < rms(low_one, SEVEN) and rms(low_seven, SEVEN) + 15 < rms(low_seven, ONE)
    assert rms(low_one, ONE) + 8 < rms(high_one, ONE)  # a lower strength keeps more of the init image
    assert rms(low_seven, SEVEN) + 8 < rms(high_seven, SEVEN)


def test_faults_are_retried_to_the_same_images(local):
    target, expected = local
    with serving(faulty(make_app(target), [500, 429, "hang"])) as url:
        remote = HTTPTarget(url, api="diffmia", batch_size=3, timeout=0.5, retries=4, backoff=0.01, concurrency=1)
        np.testing.assert_array_equal(_pixels(remote.generate(_queries())), expected)
        assert remote.requests == 3  # the hang timed out without an answer


@pytest.mark.parametrize(
    ("fault", "message"), [("count", "returned 0 images for 3 queries"), ("garbage", "cannot be decoded")]
)
def test_bad_answers_are_named(local, fault, message):
    target, _ = local
    with serving(faulty(make_app(target), [fault])) as url, pytest.raises(TargetError, match=message):
        HTTPTarget(url, batch_size=3).generate(_queries())


def test_token_is_required_and_never_written(local, tmp_path, monkeypatch, capfd):
    target, expected = local
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with serving(make_app(target, token_env=TOKEN_ENV)) as url:
        with pytest.raises(TargetError, match="HTTP 401"):
            HTTPTarget(url, retries=0).generate(_queries())
        remote = HTTPTarget(url, token_env=TOKEN_ENV)
        images = generate(remote, _queries(), GenerationCache(tmp_path / "cache"), show_progress=True)
    np.testing.assert_array_equal(_pixels(images), expected)
    assert TOKEN not in remote.fingerprint
    for file in (tmp_path / "cache").rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes()
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err


def test_unreachable_url_and_bad_settings(monkeypatch):
    with pytest.raises(TargetError, match=r"failed after 2 attempts \(last: ConnectError.*is the server running"):
        HTTPTarget("http://127.0.0.1:9", retries=1, backoff=0.01).generate(_queries(1))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"unknown api 'comfy'.*DIFFMIA_TEST_TOKEN .* is not set"):
        HTTPTarget("http://127.0.0.1:9", api="comfy", token_env=TOKEN_ENV)


@pytest.mark.slow
def test_against_the_serve_command(local, tiny_model, tmp_path):
    """`diffmia serve` itself, as a user starts it, in a subprocess on a free loopback port."""
    import socket
    import subprocess
    import sys

    import httpx

    _, expected = local
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "diffmia",
        "serve",
        str(tiny_model),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--dtype",
        "float64",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for api in ("diffmia", "a1111"):
            remote = HTTPTarget(f"http://127.0.0.1:{port}", api=api, width=16, height=16)
            np.testing.assert_array_equal(_pixels(remote.generate(_queries())), expected)
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- fake servers: what real endpoints do ----------------------------------------------------------------------


def _png(width=8, height=8, fmt="PNG", value=90):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, 2 * value % 256, 30)).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def _json(payload, status=200, headers=()):
    return status, [(b"content-type", b"application/json"), *headers], json.dumps(payload).encode()


async def _drain(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def scripted(*answers, requests=None):
    """Answers request i with ``answers[i]`` (the last one repeated): (status, headers, body) or an async
    callable ``(send) -> None`` that answers itself. ``requests`` collects (method, path)."""
    count = [0]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await _drain(receive)
        if requests is not None:
            requests.append((scope["method"], scope["path"]))
        answer = answers[min(count[0], len(answers) - 1)]
        count[0] += 1
        if callable(answer):
            await answer(send)
            return
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def fake_a1111(faults=None, bodies=None, token=None, echo=False):
    """An AUTOMATIC1111-compatible app: the image of a request is drawn from its seed, prompt and size (mixed
    with the init image for img2img), so equal requests give equal pixels. ``faults(body) -> None | 500 | 429 |
    "hang"`` injects faults; ``bodies`` collects the JSON bodies; ``token``: the bearer token it wants; ``echo``
    answers 400 repeating the request's authorization header."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        raw = await _drain(receive)
        headers = dict(scope["headers"])
        if token and headers.get(b"authorization") != f"Bearer {token}".encode():
            answer = _json({"detail": "Not authenticated"}, 401)
        elif echo:
            answer = _json({"error": f"bad request from {headers[b'authorization'].decode()}"}, 400)
        elif scope["method"] == "GET" and scope["path"] == "/sdapi/v1/sd-models":
            answer = _json([{"title": "fine-tuned.safetensors", "model_name": "fine-tuned"}])
        elif scope["method"] == "POST" and scope["path"] in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
            body = json.loads(raw)
            if bodies is not None:
                bodies.append(body)
            fault = faults(body) if faults else None
            if fault == "hang":
                await asyncio.sleep(1.0)
            answer = _json({"images": [_draw(body)]}) if fault is None else _json({"error": "busy"}, 500)
            if fault == 429:
                answer = _json({"error": "slow down"}, 429, [(b"retry-after", b"1")])
        else:
            answer = _json({"detail": "Not Found"}, 404)
        status, response_headers, content = answer
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": content})

    return app


def _draw(body):
    width, height = body.get("width", 512), body.get("height", 512)
    rng = np.random.default_rng([body["seed"], zlib.crc32(body["prompt"].encode()), width, height])
    pixels = rng.integers(0, 256, (height, width, 3)).astype(np.float64)
    if body.get("init_images"):
        raw = base64.b64decode(body["init_images"][0])
        init = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB").resize((width, height)), dtype=np.float64)
        pixels = body["denoising_strength"] * pixels + (1 - body["denoising_strength"]) * init
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _no_wait(target):
    """Waits before retries are recorded, not slept."""
    waits = []

    async def record(seconds):
        waits.append(seconds)

    target.sleep = record
    return waits


# --- 3: bad answers are TargetErrors that name the endpoint; transient ones are retried ----------------------


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_json({"images": [123]}), r"answer 0 of http://127\.0\.0\.1:\d+/v1/generate is not a base64 string but int"),
        (_json({"images": [_png(3, 700, "JPEG")]}), r"answer 0 of http://127.*/v1/generate is JPEG, expected PNG"),
        (_json({"images": ["%%% not base64"]}), "answer 0 of .* is not valid base64"),
        (_json(["not", "a", "dict"]), "answered without an 'images' list"),
        ((200, [], b"<html>proxy error</html>"), "answered with something that is not JSON"),
        (_json({"detail": "Not Found"}, 404), r"HTTP 404: no such route: is this a `diffmia serve` endpoint"),
        (_json({"error": "prompt too long"}, 400), r"HTTP 400: .*\(the server said: \{\"error\": \"prompt too long"),
        (_json({}, 307, [(b"location", b"https://elsewhere.example/v1/generate")]), "a redirect to https://elsewhere"),
    ],
)
def test_a_bad_answer_fails_at_once_naming_the_endpoint(answer, message):
    requests = []
    with serving(scripted(answer, requests=requests)) as url, pytest.raises(TargetError, match=message):
        HTTPTarget(url, retries=4, batch_size=1).generate(_queries(1))
    assert len(requests) == 1  # not retried: the same request would get the same answer


def test_a_body_that_fails_to_decompress_is_retried():
    broken = (200, [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")], b"not gzip at all")
    requests = []
    with serving(scripted(broken, _json({"images": [_png()]}), requests=requests)) as url:
        assert np.asarray(HTTPTarget(url, backoff=0.0).generate(_queries(1))[0]).shape == (8, 8, 3)
    assert len(requests) == 2
    with serving(scripted(broken)) as url, pytest.raises(TargetError, match=r"2 attempts \(last: DecodingError"):
        HTTPTarget(url, retries=1, backoff=0.0).generate(_queries(1))


@pytest.mark.parametrize("url", ["http://[::1", "ftp://127.0.0.1", "http://", "http://127.0.0.1:99999", "127.0.0.1"])
def test_a_bad_url_is_refused_at_construction(url):
    with pytest.raises(ConfigError, match="HTTP target: url"):
        HTTPTarget(url)
    with pytest.raises(ConfigError, match=r"target\.url: "):
        parse_config({"target": {"kind": "http", "url": url}})


# --- 6: no request waits forever ------------------------------------------------------------------------------


def test_retry_after_is_capped_and_a_long_wait_is_said(monkeypatch, caplog):
    real_sleep = time.sleep

    def guarded(seconds):  # the client must never block a thread this long
        assert seconds < 60, f"slept {seconds} s"
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", guarded)
    busy = _json({"error": "queue full"}, 429, [(b"retry-after", b"999999")])
    caplog.set_level(logging.INFO, logger="diffmia.targets.http")

    def said():
        return [r.getMessage() for r in caplog.records if r.name == "diffmia.targets.http"]

    with serving(scripted(busy, _json({"images": [_png()]}))) as url:
        remote = HTTPTarget(url, backoff=0.0)
        waits = _no_wait(remote)
        remote.generate(_queries(1))
    assert waits == [60.0]
    lines = said()
    assert len(lines) == 1
    assert re.search(
        r"/v1/generate: HTTP 429 with Retry-After: 999999, capped by target.max_retry_wait; "
        r"waiting 60 s before attempt 2 of 5",
        lines[0],
    )
    with serving(scripted(busy, _json({"images": [_png()]}))) as url:
        remote = HTTPTarget(url, backoff=0.0, max_retry_wait=2.0)
        waits = _no_wait(remote)
        remote.generate(_queries(1))
    assert waits == [2.0] and len(said()) == 1  # a short wait is not worth a line


def test_retry_after_as_a_date():
    from diffmia.targets.http import retry_after

    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after(soon) <= 30
    assert retry_after("2.5") == 2.5
    assert retry_after("-4") == 0.0
    assert retry_after("soon") is None and retry_after(None) is None


@pytest.mark.slow
def test_a_server_that_trickles_its_answer_meets_the_deadline():
    async def trickle(send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(30):  # 1.5 s in all, a byte at a time: every read is quick, the whole is not
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"{}"})

    with serving(scripted(trickle)) as url:
        remote = HTTPTarget(url, timeout=5.0, request_timeout=0.4, retries=1, backoff=0.0)
        began = time.monotonic()
        with pytest.raises(
            TargetError,
            match=r"2 attempts \(last: no complete answer within "
            r"target.request_timeout = 0.4 s\)",
        ):
            remote.generate(_queries(1))
        assert time.monotonic() - began < 2.0


# --- 9: secrets come from the environment only and are written nowhere -------------------------------------------


SECRET_URLS = [
    "http://me:hunter2@127.0.0.1:7860",
    "http://hunter2@127.0.0.1:7860",
    "http://127.0.0.1:7860/?api_key=hunter2",
    "http://127.0.0.1:7860#hunter2",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_url_carrying_a_secret_is_refused_without_repeating_it(url):
    with pytest.raises(ConfigError, match="token_env") as raised:
        HTTPTarget(url)
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"target.url: .*token_env") as raised:
        parse_config({"target": {"kind": "http", "url": url}})
    assert "hunter2" not in str(raised.value)


def test_the_token_reaches_no_file_and_no_message(tmp_path, monkeypatch, capfd):
    """A tiny flow without an audit: config -> target -> probe -> generation through the cache -> the config, the
    target's card and an error message written out; the token is in none of them."""
    from diffmia.audit.models import target_model
    from diffmia.files import write_json

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    messages = []
    with serving(fake_a1111(token=TOKEN)) as url:
        config = parse_config(
            {"target": {"kind": "http", "url": url, "api": "a1111", "token_env": TOKEN_ENV, "width": 16, "height": 16}}
        )
        probe_target(config.target.spec())
        target = make_target(config.target.spec())
        generate(target, _queries(), GenerationCache(tmp_path / "cache"), show_progress=True)
        (tmp_path / "config.toml").write_text(dump_config(config))
        write_json(tmp_path / "card.json", target_model(config, None, [], None).regime)
        monkeypatch.setenv(TOKEN_ENV, "a-wrong-token")
        with pytest.raises(TargetError, match=r"HTTP 401: the server refused the token in \$DIFFMIA_TEST_TOKEN") as e:
            target.generate(_queries(1))
        messages.append(str(e.value))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with serving(fake_a1111(echo=True)) as url:  # a server that repeats the request's headers in its error
        with pytest.raises(TargetError, match=r"HTTP 400: .*the server said: .*Bearer \*\*\*") as e:
            HTTPTarget(url, api="a1111", token_env=TOKEN_ENV).generate(_queries(1))
        messages.append(str(e.value))
    (tmp_path / "messages.txt").write_text("\n".join(messages))
    written = [file for file in tmp_path.rglob("*") if file.is_file()]
    assert len(written) > 6  # config, card, messages, 3 images + sidecars
    for file in written:
        assert TOKEN.encode() not in file.read_bytes(), file
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err


# --- 10: the endpoint is checked before any work ---------------------------------------------------------------


def test_probe_checks_reachability_token_and_api(local, monkeypatch):
    target, _ = local
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    requests = []
    with serving(make_app(target, token_env=TOKEN_ENV)) as url:
        HTTPTarget(url, token_env=TOKEN_ENV).probe()
        with pytest.raises(TargetError, match=r"/health answered HTTP 401: the server wants a token"):
            HTTPTarget(url).probe()
        monkeypatch.setenv("DIFFMIA_OTHER_TOKEN", "wrong")
        with pytest.raises(TargetError, match=r"HTTP 401: the server refused the token in \$DIFFMIA_OTHER_TOKEN"):
            HTTPTarget(url, token_env="DIFFMIA_OTHER_TOKEN").probe()
        HTTPTarget(url, api="a1111", token_env=TOKEN_ENV).probe()  # diffmia serve speaks both formats
        with pytest.raises(TargetError, match=r"/sdapi/v1/sd-models answered HTTP 401: the server wants a token"):
            HTTPTarget(url, api="a1111").probe()
    not_a1111 = (
        r"/sdapi/v1/sd-models answered HTTP 404: no such route: is this an AUTOMATIC1111 web UI started with --api"
    )
    with serving(scripted(_json({"detail": "Not Found"}, 404))) as url, pytest.raises(TargetError, match=not_a1111):
        HTTPTarget(url, api="a1111").probe()
    with (
        serving(scripted(_json({"status": "ok"}), requests=requests)) as url,
        pytest.raises(TargetError, match=r"sd-models answered, but not as an AUTOMATIC1111 web UI"),
    ):
        HTTPTarget(url, api="a1111").probe()
    assert requests == [("GET", "/sdapi/v1/sd-models")]
    with serving(fake_a1111()) as url:
        HTTPTarget(url, api="a1111").probe()
        with pytest.raises(TargetError, match=r"/health answered HTTP 404: no such route: is this a `diffmia serve`"):
            HTTPTarget(url, api="diffmia").probe()
    with pytest.raises(TargetError, match=r"does not answer as it should: .*ConnectError.*is the server running"):
        HTTPTarget("http://127.0.0.1:9", backoff=0.0).probe()


def test_an_audit_probes_its_http_target_before_any_work(tmp_path, monkeypatch):
    from diffmia.audit import run_audit

    probed = []
    monkeypatch.setattr(HTTPTarget, "probe", lambda self: probed.append(self.url))
    probe_target({"kind": "diffusers", "model": "nowhere"})  # a local target: nothing to ask
    assert probed == []
    config = parse_config(
        {
            "audit": {"runs_dir": str(tmp_path), "shadows": 1, "scenarios": ["III"]},
            "data": {"builtin_members": 10, "builtin_nonmembers": 10},
            "target": {"kind": "http", "url": "http://127.0.0.1:9"},
        }
    )
    monkeypatch.setattr(HTTPTarget, "probe", lambda self: (_ for _ in ()).throw(TargetError("probed: unreachable")))
    with pytest.raises(TargetError, match="probed: unreachable"):
        run_audit(config)
    assert not list(tmp_path.rglob("config.toml")) and not list(tmp_path.rglob("models"))


# --- 11: AUTOMATIC1111 is always told the size --------------------------------------------------------------------


def test_a1111_requests_carry_width_and_height(tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (24, 40), (200, 10, 10)).save(init)
    queries = [
        Query("a", seed=1),
        Query("b", seed=2, width=32, height=48),
        Query("c", seed=3, init_image=init, strength=0.5),
        Query("d", seed=4, width=16, height=16, init_image=init, strength=0.5),
    ]
    bodies = []
    with serving(fake_a1111(bodies=bodies)) as url:
        images = HTTPTarget(url, api="a1111", concurrency=1).generate(queries)
        sizes = [(body["width"], body["height"]) for body in bodies]
        assert sizes == [(512, 512), (32, 48), (24, 40), (16, 16)]  # default, the query's, the init image's
        assert [image.size for image in images] == sizes
        bodies.clear()
        HTTPTarget(url, api="a1111", width=64, height=96).generate(queries[:1])
        assert (bodies[0]["width"], bodies[0]["height"]) == (64, 96)
    assert [b.get("init_images") is not None for b in bodies] == [False]
    assert HTTPTarget(url, api="a1111").fingerprint != HTTPTarget(url, api="a1111", width=64, height=96).fingerprint


# --- transient faults never change an image -------------------------------------------------------------------


def test_a_flaky_endpoint_gives_the_images_of_a_reliable_one(tmp_path):
    """30 queries (text and image to image) against an endpoint that fails about 15% of its requests (500, 429
    with Retry-After: 1, a hang past the deadline), seeded: the pixels are those of a run without faults."""
    init = tmp_path / "init.png"
    Image.new("RGB", (16, 16), (10, 120, 240)).save(init)
    queries = [
        Query(
            CAPTIONS[i % 2],
            seed=100 + i,
            steps=2,
            init_image=init if i % 3 == 0 else None,
            strength=0.6 if i % 3 == 0 else None,
        )
        for i in range(30)
    ]
    attempts, faults = {}, []

    def flaky(body):
        key = (body["seed"], "init_images" in body)
        attempts[key] = attempts.get(key, 0) + 1
        draw = random.Random(f"{FAULT_SEED}:{key}:{attempts[key]}")
        fault = draw.choice([500, 429, "hang"]) if draw.random() < 0.15 else None
        if fault is not None:
            faults.append(fault)
        return fault

    settings = {"api": "a1111", "width": 16, "height": 16, "concurrency": 3, "request_timeout": 0.3, "retries": 4}
    with serving(fake_a1111()) as url:
        expected = _pixels(HTTPTarget(url, **settings).generate(queries))
    with serving(fake_a1111(faults=flaky)) as url:
        remote = HTTPTarget(url, **settings)
        waits = _no_wait(remote)
        images = remote.generate(queries)
    np.testing.assert_array_equal(_pixels(images), expected)
    assert set(faults) == {500, 429, "hang"} and 3 <= len(faults) <= 10
    assert len(waits) == len(faults)  # every fault was retried, none gave up
