"""``diffmia serve``: any local diffusers model behind both wire formats of :mod:`diffmia.targets.http`.

A small ASGI application (run by uvicorn): ``POST /v1/generate`` (diffmia), ``POST /sdapi/v1/txt2img`` and
``POST /sdapi/v1/img2img`` (AUTOMATIC1111), ``GET /health``. Generation runs one request at a time in a worker
thread. With ``token_env`` set, requests must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from diffmia.errors import DiffmiaError
from diffmia.records import Query
from diffmia.targets import Target
from diffmia.targets.http import decode_png, encode_png

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BadRequest(Exception):
    pass


def _int(item: dict[str, Any], key: str, default: int | None) -> int | None:
    value = item.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{key} must be an integer")
    return value


def _float(item: dict[str, Any], key: str, default: float | None) -> float | None:
    value = item.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadRequest(f"{key} must be a number")
    return float(value)


ROUTES = ("/v1/generate", "/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def make_app(target: Target, token_env: str | None = None) -> ASGIApp:
    """The ASGI application serving ``target``."""
    lock = threading.Lock()
    workdir = Path(tempfile.mkdtemp(prefix="diffmia-serve-"))

    def generate(queries: list[Query]) -> list[str]:
        with lock:  # one generation at a time
            return [encode_png(image) for image in target.generate(queries)]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if token_env is not None and not _authorised(scope, token_env):
            await _respond(send, 401, {"error": "missing or wrong bearer token"})
            return
        if method == "GET" and path == "/health":
            await _respond(send, 200, {"status": "ok", "target": target.fingerprint})
            return
        if method != "POST" or path not in ROUTES:
            await _respond(send, 404, {"error": f"no route {method} {path}"})
            return
        raw = await _read_body(receive)
        try:
            body = _json_object(raw)
            queries = _queries(body, path, workdir)
            images = await asyncio.to_thread(generate, queries)
        except (BadRequest, DiffmiaError, ValueError) as exc:
            await _respond(send, 400, {"error": str(exc)})
            return
        payload: dict[str, Any] = {"images": images}
        if path != "/v1/generate":
            payload |= {"parameters": body, "info": json.dumps({"seed": queries[0].seed})}
        await _respond(send, 200, payload)

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge uvicorn's startup and shutdown: there is nothing to set up or tear down."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _authorised(scope: Scope, token_env: str) -> bool:
    """Whether the request carries the bearer token now in ``$token_env`` (read per request, so it can rotate)."""
    expected = f"Bearer {os.environ.get(token_env, '')}".encode()
    return dict(scope["headers"]).get(b"authorization") == expected


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any]:
    body = json.loads(raw or b"{}")
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def _respond(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _queries(body: dict[str, Any], path: str, workdir: Path) -> list[Query]:
    """The queries of a request in the wire format of ``path``; init images are written to ``workdir``."""
    if path == "/v1/generate":
        return _queries_from_diffmia(body, workdir)
    return _queries_from_a1111(body, path.endswith("img2img"), workdir)


def _init_image(data: str | None, index: int, workdir: Path) -> Path | None:
    """A request's base64 PNG written to a file, as :class:`Query` takes its init image."""
    if data is None:
        return None
    path = workdir / f"init-{threading.get_ident()}-{index}.png"
    decode_png(data, "request").save(path)
    return path


def _queries_from_diffmia(body: dict[str, Any], workdir: Path) -> list[Query]:
    items = body.get("queries")
    if not isinstance(items, list) or not items:
        raise BadRequest("the body needs a non-empty 'queries' list")
    queries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise BadRequest(f"queries[{i}] needs a string 'prompt'")
        queries.append(Query(
            prompt=item["prompt"], seed=_int(item, "seed", 0) or 0, steps=_int(item, "steps", 30) or 30,
            guidance=_float(item, "guidance", 7.5) or 0.0, negative_prompt=str(item.get("negative_prompt") or ""),
            width=_int(item, "width", None), height=_int(item, "height", None),
            init_image=_init_image(item.get("init_image"), i, workdir), strength=_float(item, "strength", None),
        ))  # fmt: skip
    return queries


def _queries_from_a1111(body: dict[str, Any], img2img: bool, workdir: Path) -> list[Query]:
    if not isinstance(body.get("prompt"), str):
        raise BadRequest("the body needs a string 'prompt'")
    count = (_int(body, "batch_size", 1) or 1) * (_int(body, "n_iter", 1) or 1)
    seed = _int(body, "seed", -1)
    seed = seed if seed is not None and seed >= 0 else 0
    init = None
    if img2img:
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            raise BadRequest("img2img needs 'init_images'")
        init = _init_image(images[0], 0, workdir)
    return [
        Query(
            prompt=body["prompt"], seed=seed + i, steps=_int(body, "steps", 20) or 20,
            guidance=_float(body, "cfg_scale", 7.0) or 0.0, negative_prompt=str(body.get("negative_prompt") or ""),
            width=_int(body, "width", None), height=_int(body, "height", None), init_image=init,
            strength=_float(body, "denoising_strength", 0.75) if img2img else None,
        )
        for i in range(count)
    ]  # fmt: skip
