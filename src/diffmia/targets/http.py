"""A remote text-to-image endpoint as a target, in two wire formats:

- ``a1111``: the AUTOMATIC1111 web-UI API, ``POST /sdapi/v1/txt2img`` and ``/sdapi/v1/img2img`` (base64 PNG
  images; ``seed``, ``steps``, ``cfg_scale``, ``denoising_strength``, ``batch_size``, ``width``, ``height``);
  one request per query, so every image keeps its own seed;
- ``diffmia``: ``POST /v1/generate`` with ``{"queries": [{prompt, seed, steps, guidance, negative_prompt, width,
  height, init_image (base64 PNG or null), strength}]}`` answered by ``{"images": [base64 PNG, ...]}``, one
  image per query, in order (what ``diffmia serve`` speaks).

A bearer token is read from the environment variable named by ``token_env`` at request time and is never
stored, logged or written. Connection errors, timeouts, 5xx and 429 answers are retried with exponential
backoff and jitter (honouring ``Retry-After``); requests run at most ``concurrency`` at a time.
"""

from __future__ import annotations

import base64
import io
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from diffmia.errors import ConfigError, TargetError
from diffmia.images import load_rgb
from diffmia.records import Query

FORMATS = ("a1111", "diffmia")
RETRY_STATUS = {429, 500, 502, 503, 504}


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(data: str, where: str) -> Image.Image:
    try:
        raw = base64.b64decode(data.split(",", 1)[-1], validate=True)  # tolerate a data-URL prefix
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.convert("RGB")
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise TargetError(f"{where}: the server sent an image that cannot be decoded ({exc})") from None


class HTTPTarget:
    """A text-to-image HTTP endpoint.

    Parameters
    ----------
    url : base URL, e.g. ``http://127.0.0.1:7860``
    api : "a1111" or "diffmia"
    token_env : name of the environment variable holding a bearer token (None: no authentication)
    timeout : seconds per request; retries : attempts after the first; backoff : first wait in seconds
    concurrency : requests in flight at once; batch_size : queries per request (diffmia format)
    sampler : A1111 sampler name (None: the server's default)
    """

    def __init__(self, url: str, *, api: str = "diffmia", token_env: str | None = None, timeout: float = 120.0,
                 retries: int = 4, backoff: float = 1.0, concurrency: int = 2, batch_size: int = 8,
                 sampler: str | None = None, name: str | None = None) -> None:  # fmt: skip
        problems = []
        if api not in FORMATS:
            problems.append(f"unknown api {api!r} (valid: {', '.join(FORMATS)})")
        if not url.startswith(("http://", "https://")):
            problems.append(f"url must start with http:// or https://, got {url!r}")
        if token_env is not None and not os.environ.get(token_env):
            problems.append(f"the environment variable {token_env} (the API token) is not set")
        if concurrency < 1 or batch_size < 1 or retries < 0 or timeout <= 0:
            problems.append("concurrency and batch_size must be >= 1, retries >= 0, timeout > 0")
        if problems:
            raise ConfigError("HTTP target: " + "; ".join(problems))
        self.url, self.api, self.token_env = url.rstrip("/"), api, token_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency, self.batch_size, self.sampler = concurrency, batch_size, sampler
        # the fingerprint names the endpoint, never the token; ``name`` pins it when the URL changes
        self.fingerprint = f"http({name or self.url},api={api},sampler={sampler})"
        self.requests = 0

    def _headers(self) -> dict[str, str]:
        if self.token_env is None:
            return {}
        return {"Authorization": f"Bearer {os.environ.get(self.token_env, '')}"}

    def _post(self, client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            wait = self.backoff * 2**attempt * (0.5 + random.random())
            try:
                response = client.post(self.url + path, json=body, headers=self._headers())
                self.requests += 1
            except httpx.TransportError as exc:  # connection refused, reset, timeouts
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 300:
                    try:
                        return response.json()
                    except ValueError:
                        raise TargetError(f"{self.url}{path} answered with something that is not JSON") from None
                problem = f"HTTP {response.status_code}"
                if response.status_code not in RETRY_STATUS:
                    raise TargetError(f"{self.url}{path} answered {problem}: {response.text[:200]}")
                retry_after = response.headers.get("Retry-After")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            if attempt == self.retries:
                raise TargetError(f"{self.url}{path} failed after {self.retries + 1} attempts (last: {problem})")
            time.sleep(wait)
            attempt += 1

    def _a1111(self, client: httpx.Client, query: Query) -> list[Image.Image]:
        body: dict[str, Any] = {
            "prompt": query.prompt, "negative_prompt": query.negative_prompt, "seed": query.seed,
            "steps": query.steps, "cfg_scale": query.guidance, "batch_size": 1, "n_iter": 1,
        }  # fmt: skip
        if query.width:
            body["width"] = query.width
        if query.height:
            body["height"] = query.height
        if self.sampler:
            body["sampler_name"] = self.sampler
        path = "/sdapi/v1/txt2img"
        if query.init_image is not None:
            body |= {"init_images": [encode_png(load_rgb(query.init_image))], "denoising_strength": query.strength}
            path = "/sdapi/v1/img2img"
        return self._images(self._post(client, path, body), 1, path)

    def _diffmia(self, client: httpx.Client, queries: Sequence[Query]) -> list[Image.Image]:
        items = []
        for q in queries:
            item = dict(q.identity())
            item.pop("init_image_sha256")
            item["init_image"] = encode_png(load_rgb(q.init_image)) if q.init_image is not None else None
            items.append(item)
        return self._images(self._post(client, "/v1/generate", {"queries": items}), len(queries), "/v1/generate")

    def _images(self, payload: Any, expected: int, path: str) -> list[Image.Image]:
        images = payload.get("images") if isinstance(payload, dict) else None
        if not isinstance(images, list):
            raise TargetError(f"{self.url}{path} answered without an 'images' list")
        if len(images) != expected:
            raise TargetError(f"{self.url}{path} returned {len(images)} images for {expected} queries")
        return [decode_png(item, f"{self.url}{path}") for item in images]

    def generate(self, queries: Sequence[Query]) -> list[Image.Image]:
        if self.api == "a1111":
            groups = [[q] for q in queries]
        else:
            groups = [list(queries[i : i + self.batch_size]) for i in range(0, len(queries), self.batch_size)]
        with httpx.Client(timeout=self.timeout) as client, ThreadPoolExecutor(self.concurrency) as pool:
            if self.api == "a1111":
                parts = list(pool.map(lambda group: self._a1111(client, group[0]), groups))
            else:
                parts = list(pool.map(lambda group: self._diffmia(client, group), groups))
        return [image for part in parts for image in part]
