"""``diffmia serve``: any local diffusers model behind both wire formats of :mod:`diffmia.targets.http`.

A small ASGI application (run by uvicorn): ``POST /v1/generate`` (diffmia), ``POST /sdapi/v1/txt2img`` and
``POST /sdapi/v1/img2img`` (AUTOMATIC1111), and the probes of :meth:`~diffmia.targets.http.HTTPTarget.probe`:
``GET /health`` (diffmia) and ``GET /sdapi/v1/sd-models`` (AUTOMATIC1111's list of checkpoints: the one served
model). With ``token_env`` set, requests must carry ``Authorization: Bearer <token>`` (compared in constant time).

Safe to share: a request's init images stay in memory, in that request alone (no file is written, so no request
can read another's picture), and generation runs one request at a time in a worker thread. Every request is held
to :class:`Limits`: a body over the limit is answered 413, a field out of range (or an image that cannot be
decoded, or a decompression bomb) 422 naming the field, its value and the limit; a malformed body 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import math
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from diffmia.errors import DiffmiaError, TargetError
from diffmia.images import decode_image, to_rgb
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget
from diffmia.targets.http import encode_png

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 32 * 1024 * 1024  # a request body, base64 init images included
MAX_IMAGES = 16  # images generated for one request (queries, or batch_size * n_iter)
MAX_STEPS = 150  # denoising steps of one image
MAX_SIDE = 2048  # width and height of a generated image and of an init image, in pixels
SIDE_MULTIPLE = 8  # width and height must be multiples of this (the VAE's downscaling)
MAX_SEED = 2**64 - 1  # what a torch generator takes


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (``diffmia serve --max-...``)."""

    body_bytes: int = MAX_BODY_BYTES
    images: int = MAX_IMAGES
    steps: int = MAX_STEPS
    side: int = MAX_SIDE

    def __post_init__(self) -> None:
        bad = {name: value for name, value in vars(self).items() if value < 1}
        if bad:
            raise DiffmiaError(f"serve limits must be at least 1, got {bad}")


class BadRequest(DiffmiaError):
    """A request the server refuses; ``status`` is its HTTP answer (400: malformed)."""

    status = 400


class BodyTooLarge(BadRequest):
    status = 413


class OutOfRange(BadRequest):
    """A field out of its range, or an image that cannot be used (422)."""

    status = 422


@dataclass(frozen=True)
class Job:
    """One request's work: its queries and their init images as (field, base64), None for text-to-image."""

    queries: list[Query]
    init_images: list[tuple[str, Any] | None]
    png_only: bool  # the wire format promises PNG init images


ROUTES = ("/v1/generate", "/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an interface to listen on) is this machine alone: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def make_app(target: DiffusersTarget, token_env: str | None = None, limits: Limits | None = None) -> ASGIApp:
    """The ASGI application serving ``target`` within ``limits`` (default: :class:`Limits`)."""
    limits = limits or Limits()
    lock = threading.Lock()

    def work(raw: bytes, path: str) -> dict[str, Any]:
        """Parse, check and generate one request (in a worker thread); its images never leave this call."""
        body = _json_object(raw)
        job = _job(body, path, limits)
        with lock:  # one generation at a time; decoding inside it keeps one request's images in memory at once
            images = target.generate(job.queries, init_images=_decode_all(job, limits))
        payload: dict[str, Any] = {"images": [encode_png(image) for image in images]}
        if path != "/v1/generate":
            parameters = {key: value for key, value in body.items() if key != "init_images"}
            payload |= {"parameters": parameters, "info": json.dumps({"seed": job.queries[0].seed})}
        return payload

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
        if method == "GET" and path == "/sdapi/v1/sd-models":
            name = os.path.basename(target.model.rstrip("/\\")) or target.model
            await _respond(send, 200, [{"title": name, "model_name": name, "filename": target.model}])
            return
        if method != "POST" or path not in ROUTES:
            await _respond(send, 404, {"error": f"no route {method} {path}"})
            return
        try:
            raw = await _read_body(scope, receive, limits.body_bytes)
            payload = await asyncio.to_thread(work, raw, path)
        except BadRequest as exc:
            await _respond(send, exc.status, {"error": str(exc)})
            return
        except TargetError as exc:
            await _respond(send, 500, {"error": str(exc)})
            return
        except (DiffmiaError, ValueError) as exc:  # ValueError: a request the pipeline refuses
            await _respond(send, 400, {"error": str(exc)})
            return
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
    """Whether the request carries the bearer token now in ``$token_env`` (read per request, so it can rotate).

    An unset or empty token admits nobody; the comparison takes the same time wherever the strings differ.
    """
    token = os.environ.get(token_env, "")
    given = dict(scope["headers"]).get(b"authorization", b"")
    return bool(token) and hmac.compare_digest(given, f"Bearer {token}".encode())


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused (413) as soon as its declared or received length passes ``limit`` bytes."""
    too_large = f"the request body is larger than the limit of {limit:,} bytes"
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(too_large + f" ({int(declared):,} bytes)")
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(too_large)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def _respond(send: Send, status: int, payload: dict[str, Any] | list[Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _int(
    item: dict[str, Any],
    key: str,
    default: int | None,
    *,
    name: str | None = None,
    low: int | None = None,
    high: int | None = None,
    limit: str = "the limit",
) -> int | None:
    """``item[key]`` as an integer within ``[low, high]`` (422 naming ``name``, the value and the bound)."""
    name = name or key
    value = item.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise OutOfRange(f"{name} is {value}, below the minimum of {low}")
    if high is not None and value > high:
        raise OutOfRange(f"{name} is {value}, over {limit} of {high}")
    return value


def _float(item: dict[str, Any], key: str, default: float | None, *, name: str | None = None) -> float | None:
    name = name or key
    value = item.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _strength(item: dict[str, Any], key: str, default: float | None, name: str) -> float | None:
    value = _float(item, key, default, name=name)
    if value is not None and not 0.0 < value <= 1.0:
        raise OutOfRange(f"{name} is {value}, outside (0, 1]")
    return value


def _side(item: dict[str, Any], key: str, name: str, limits: Limits, img2img: bool) -> int | None:
    """A width or height: None (the model's own), or up to the limit; a multiple of 8 for text-to-image (an init
    image of any size is resized, and AUTOMATIC1111 clients send its size)."""
    value = _int(item, key, None, name=name, low=SIDE_MULTIPLE, high=limits.side)
    if value is not None and value % SIDE_MULTIPLE and not img2img:
        raise OutOfRange(f"{name} is {value}, not a multiple of {SIDE_MULTIPLE}")
    return value


def _count(count: int, what: str, limits: Limits) -> None:
    if count > limits.images:
        raise OutOfRange(f"{what} is {count}, over the limit of {limits.images} images per request")


def _job(body: dict[str, Any], path: str, limits: Limits) -> Job:
    """The work of a request in the wire format of ``path``, every field checked against ``limits``."""
    if path == "/v1/generate":
        return _job_from_diffmia(body, limits)
    return _job_from_a1111(body, path.endswith("img2img"), limits)


def _job_from_diffmia(body: dict[str, Any], limits: Limits) -> Job:
    items = body.get("queries")
    if not isinstance(items, list) or not items:
        raise BadRequest("the body needs a non-empty 'queries' list")
    _count(len(items), "the number of queries", limits)
    queries, inits = [], []
    for i, item in enumerate(items):
        at = f"queries[{i}]."
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise BadRequest(f"queries[{i}] needs a string 'prompt'")
        init = item.get("init_image")
        strength = _strength(item, "strength", None, at + "strength")
        if (init is None) != (strength is None):
            raise OutOfRange(f"queries[{i}] needs both init_image and strength for image-to-image, or neither")
        queries.append(
            Query(
                prompt=item["prompt"],
                seed=_int(item, "seed", 0, name=at + "seed", low=0, high=MAX_SEED) or 0,
                steps=_int(item, "steps", 30, name=at + "steps", low=1, high=limits.steps) or 30,
                guidance=_float(item, "guidance", 7.5, name=at + "guidance") or 0.0,
                negative_prompt=str(item.get("negative_prompt") or ""),
                strength=strength,
                width=_side(item, "width", at + "width", limits, img2img=strength is not None),
                height=_side(item, "height", at + "height", limits, img2img=strength is not None),
            )
        )
        inits.append(None if init is None else (f"{at}init_image", init))
    return Job(queries, inits, png_only=True)


def _job_from_a1111(body: dict[str, Any], img2img: bool, limits: Limits) -> Job:
    if not isinstance(body.get("prompt"), str):
        raise BadRequest("the body needs a string 'prompt'")
    batch_size = _int(body, "batch_size", 1, low=1) or 1
    n_iter = _int(body, "n_iter", 1, low=1) or 1
    _count(batch_size * n_iter, f"batch_size * n_iter ({batch_size} * {n_iter})", limits)
    seed = _int(body, "seed", -1, high=MAX_SEED - batch_size * n_iter + 1)
    seed = seed if seed is not None and seed >= 0 else 0  # -1: A1111's "random"; here the first seed, 0
    init = None
    if img2img:
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            raise BadRequest("img2img needs 'init_images'")
        init = ("init_images[0]", images[0])
    query = Query(
        prompt=body["prompt"],
        seed=seed,
        steps=_int(body, "steps", 20, low=1, high=limits.steps) or 20,
        guidance=_float(body, "cfg_scale", 7.0) or 0.0,
        negative_prompt=str(body.get("negative_prompt") or ""),
        width=_side(body, "width", "width", limits, img2img),
        height=_side(body, "height", "height", limits, img2img),
        strength=_strength(body, "denoising_strength", 0.75, "denoising_strength") if img2img else None,
    )
    count = batch_size * n_iter
    queries = [replace(query, seed=seed + i) for i in range(count)]
    return Job(queries, [init] * count, png_only=False)


def _decode_all(job: Job, limits: Limits) -> list[Image.Image | None]:
    """The job's init images as 8-bit RGB in memory, each decoded once (a shared one is one object)."""
    decoded: dict[int, Image.Image] = {}
    images: list[Image.Image | None] = []
    for init in job.init_images:
        if init is None:
            images.append(None)
            continue
        if id(init) not in decoded:
            field, data = init
            decoded[id(init)] = _decode(data, f"init image {field} of the request", job.png_only, limits)
        images.append(decoded[id(init)])
    return images


def _decode(data: Any, what: str, png_only: bool, limits: Limits) -> Image.Image:
    """One base64 init image (a data-URL prefix is tolerated), refused with 422 when it cannot be used."""
    if not isinstance(data, str):
        raise BadRequest(f"{what} must be a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data.split(",", 1)[-1], validate=True)
    except (binascii.Error, ValueError):
        raise OutOfRange(f"{what} is not valid base64") from None
    image = decode_image(
        raw, what=what, formats=("PNG",) if png_only else None, error=OutOfRange, max_pixels=limits.side * limits.side
    )
    if max(image.size) > limits.side:
        raise OutOfRange(f"{what} is {image.width}x{image.height} pixels, over the limit of {limits.side} a side")
    return to_rgb(image, what, error=OutOfRange)
