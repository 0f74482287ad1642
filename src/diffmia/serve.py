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


def make_app(target: Target, token_env: str | None = None) -> ASGIApp:
    """The ASGI application serving ``target``."""
    lock = threading.Lock()
    workdir = Path(tempfile.mkdtemp(prefix="diffmia-serve-"))

    def init_image(data: str | None, index: int) -> Path | None:
        if data is None:
            return None
        path = workdir / f"init-{threading.get_ident()}-{index}.png"
        decode_png(data, "request").save(path)
        return path

    def queries_from_diffmia(body: dict[str, Any]) -> list[Query]:
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
                init_image=init_image(item.get("init_image"), i), strength=_float(item, "strength", None),
            ))  # fmt: skip
        return queries

    def queries_from_a1111(body: dict[str, Any], img2img: bool) -> list[Query]:
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
            init = init_image(images[0], 0)
        return [
            Query(
                prompt=body["prompt"], seed=seed + i, steps=_int(body, "steps", 20) or 20,
                guidance=_float(body, "cfg_scale", 7.0) or 0.0, negative_prompt=str(body.get("negative_prompt") or ""),
                width=_int(body, "width", None), height=_int(body, "height", None), init_image=init,
                strength=_float(body, "denoising_strength", 0.75) if img2img else None,
            )
            for i in range(count)
        ]  # fmt: skip

    def run(queries: list[Query]) -> list[str]:
        with lock:
            return [encode_png(image) for image in target.generate(queries)]

    async def respond(send: Send, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if token_env is not None:
            expected = f"Bearer {os.environ.get(token_env, '')}".encode()
            if dict(scope["headers"]).get(b"authorization") != expected:
                await respond(send, 401, {"error": "missing or wrong bearer token"})
                return
        if method == "GET" and path == "/health":
            await respond(send, 200, {"status": "ok", "target": target.fingerprint})
            return
        if method != "POST" or path not in ("/v1/generate", "/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
            await respond(send, 404, {"error": f"no route {method} {path}"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            body = json.loads(b"".join(chunks) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            if path == "/v1/generate":
                queries = queries_from_diffmia(body)
            else:
                queries = queries_from_a1111(body, img2img=path.endswith("img2img"))
            images = await asyncio.to_thread(run, queries)
        except (BadRequest, DiffmiaError, ValueError) as exc:
            await respond(send, 400, {"error": str(exc)})
            return
        payload: dict[str, Any] = {"images": images}
        if path != "/v1/generate":
            payload |= {"parameters": body, "info": json.dumps({"seed": queries[0].seed})}
        await respond(send, 200, payload)

    return app
