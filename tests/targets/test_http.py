"""The HTTP target against a real `diffmia serve` app on loopback: both wire formats, faults, tokens."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import uvicorn

from diffmia.cache import GenerationCache
from diffmia.errors import ConfigError, TargetError
from diffmia.execution import generate
from diffmia.records import Query
from diffmia.serve import make_app
from diffmia.targets.diffusers import DiffusersTarget
from diffmia.targets.http import HTTPTarget

CAPTIONS = ["a thin dark upright narrow small handwritten seven, placed high left", "a bold soft one"]
TOKEN_ENV, TOKEN = "DIFFMIA_TEST_TOKEN", "s3cret-token-value"


@contextmanager
def serving(app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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
        remote = HTTPTarget(url, api=api, batch_size=2)
        np.testing.assert_array_equal(_pixels(remote.generate(_queries())), expected)


def test_faults_are_retried_to_the_same_images(local):
    target, expected = local
    with serving(faulty(make_app(target), [500, 429, "hang"])) as url:
        remote = HTTPTarget(url, api="diffmia", batch_size=3, timeout=0.5, retries=4, backoff=0.01, concurrency=1)
        np.testing.assert_array_equal(_pixels(remote.generate(_queries())), expected)
        assert remote.requests == 3  # the hang timed out without an answer


@pytest.mark.parametrize(("fault", "message"), [("count", "returned 0 images for 3 queries"),
                                                ("garbage", "cannot be decoded")])  # fmt: skip
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
    with pytest.raises(TargetError, match=r"failed after 2 attempts \(last: ConnectError\)"):
        HTTPTarget("http://127.0.0.1:9", retries=1, backoff=0.01).generate(_queries(1))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"unknown api 'comfy'.*DIFFMIA_TEST_TOKEN .* is not set"):
        HTTPTarget("http://127.0.0.1:9", api="comfy", token_env=TOKEN_ENV)


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
    command = [sys.executable, "-m", "diffmia", "serve", str(tiny_model), "--port", str(port), "--device", "cpu",
               "--dtype", "float64"]  # fmt: skip
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
            remote = HTTPTarget(f"http://127.0.0.1:{port}", api=api)
            np.testing.assert_array_equal(_pixels(remote.generate(_queries())), expected)
    finally:
        server.terminate()
        server.wait(timeout=30)
