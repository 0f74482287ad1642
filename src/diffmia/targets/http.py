"""A remote text-to-image endpoint as a target, in two wire formats:

- ``a1111``: the AUTOMATIC1111 web-UI API, ``POST /sdapi/v1/txt2img`` and ``/sdapi/v1/img2img`` (base64 PNG
  images; ``seed``, ``steps``, ``cfg_scale``, ``denoising_strength``, ``batch_size``, ``width``, ``height``);
  one request per query, so every image keeps its own seed. The size is always sent (the server would otherwise
  render 512x512 whatever the model): the query's, else the init image's (image-to-image), else ``width`` x
  ``height`` (default 512x512);
- ``diffmia``: ``POST /v1/generate`` with ``{"queries": [{prompt, seed, steps, guidance, negative_prompt, width,
  height, init_image (base64 PNG or null), strength}]}`` answered by ``{"images": [base64 PNG, ...]}``, one
  image per query, in order (what ``diffmia serve`` speaks).

Secrets come from the environment only: a bearer token is read from the variable named by ``token_env`` at
request time and is never stored, logged or written; a URL carrying credentials (``user:password@``) or a query
string is refused, so nothing secret reaches a fingerprint, a cache, a run directory or a message.

Every request has an overall deadline (``request_timeout``, the answer's body included), on top of ``timeout``,
the longest silence in any one phase. Transient faults (connection errors, timeouts, a body that breaks off or
fails to decompress, HTTP 408, 429 and 5xx but 501 and 505) are retried with exponential backoff and jitter,
honouring ``Retry-After`` up to ``max_retry_wait``; a wait longer than a few seconds is said in one line. Anything
else fails at once with a :class:`~diffmia.errors.TargetError` naming the endpoint and what to do. Answers must be
PNG images (:func:`diffmia.images.decode_image`: no other format, no decompression bomb). Requests run at most
``concurrency`` at a time. :meth:`HTTPTarget.probe` checks the endpoint with one cheap request.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import math
import os
import random
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal, TypeVar

import httpx
from PIL import Image
from pydantic import Field, field_validator, model_validator

from diffmia.errors import ConfigError, TargetError
from diffmia.images import decode_image, load_rgb, to_rgb
from diffmia.records import Query
from diffmia.sections import SecretInput
from diffmia.targets.base import TargetSection

FORMATS = ("a1111", "diffmia")
DESCRIBED = {"a1111": "an AUTOMATIC1111 web UI started with --api", "diffmia": "a `diffmia serve` endpoint"}
PROBES = {"a1111": "/sdapi/v1/sd-models", "diffmia": "/health"}
A1111_SIZE = 512  # AUTOMATIC1111's own default size, sent explicitly where nothing else gives one
NOTICE_AFTER = 5.0  # seconds: a longer wait before a retry is said in one line
MAX_ANSWER_BYTES = 1 << 30  # an answer larger than this is refused (a hostile or broken server)
# faults that a later attempt may not meet: the transport's, not the server's considered answer
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.DecodingError)

_T = TypeVar("_T")
log = logging.getLogger(__name__)


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(data: object, where: str) -> Image.Image:
    """A base64 PNG (a data-URL prefix tolerated) as 8-bit RGB; anything else is a TargetError naming ``where``."""
    if not isinstance(data, str):
        raise TargetError(f"{where} is not a base64 string but {type(data).__name__}")
    try:
        raw = base64.b64decode(data.split(",", 1)[-1], validate=True)
    except ValueError:
        raise TargetError(f"{where} cannot be decoded: it is not valid base64") from None
    return to_rgb(decode_image(raw, what=where, formats=("PNG",), error=TargetError), where, TargetError)


def redact(url: str) -> str:
    """``url`` without what may be secret: the ``user:password@`` part and any ``?query`` or ``#fragment``."""
    url = re.sub(r"(?<=//)[^/?#]*@", "***@", url)
    return re.sub(r"[?#].*", "?***", url, flags=re.DOTALL)


def url_problems(url: str) -> list[str]:
    """What is wrong with ``url`` as an endpoint's base URL (nothing: an empty list)."""
    shown = redact(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        return [f"url {shown!r} is not a valid URL ({exc})"]
    problems = []
    if parts.scheme not in ("http", "https"):
        problems.append(f"url must start with http:// or https://, got {shown!r}")
    elif not parts.hostname:
        problems.append(f"url {shown!r} names no host")
    if "@" in parts.netloc:
        problems.append(
            f"url {shown!r} carries credentials: put the secret in an environment variable and name "
            "it in target.token_env (sent as a bearer token, never written anywhere)"
        )
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        problems.append(
            f"url {shown!r} must be the server's base URL, without a ?query or #fragment (a token "
            "belongs in the environment variable named by target.token_env)"
        )
    return problems


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None where it says nothing usable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return None if math.isnan(seconds) else max(0.0, seconds)


def transient_status(status: int) -> bool:
    """Whether an HTTP status may go away on its own: request timeout, too many requests, a server fault."""
    return status in (408, 429) or (500 <= status < 600 and status not in (501, 505))


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to its end from synchronous code, also where this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:  # e.g. a notebook: its loop is busy running the caller
        return pool.submit(asyncio.run, coroutine).result()


class HTTPTarget:
    """A text-to-image HTTP endpoint.

    Parameters
    ----------
    url : base URL, e.g. ``http://127.0.0.1:7860`` (no credentials, no query string: tokens go in ``token_env``)
    api : "a1111" or "diffmia"
    token_env : name of the environment variable holding a bearer token (None: no authentication)
    timeout : seconds any phase of a request (connecting, sending, waiting for the next bytes) may stall
    request_timeout : seconds one request may take in all, its answer's body included
    retries : attempts after the first; backoff : first wait in seconds; max_retry_wait : the longest wait
        before a retry, whatever ``Retry-After`` asks
    concurrency : requests in flight at once; batch_size : queries per request (diffmia format)
    width, height : size of text-to-image answers where a query has none (None: 512 for a1111, its default;
        the served model's own for diffmia)
    sampler : A1111 sampler name (None: the server's default)
    name : what the fingerprint calls the endpoint (default: its URL), so a moved endpoint keeps its cache

    A wait before a retry longer than a few seconds is logged (``diffmia.targets.http``, level INFO).
    """

    def __init__(
        self,
        url: str,
        *,
        api: str = "diffmia",
        token_env: str | None = None,
        timeout: float = 120.0,
        request_timeout: float = 300.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_retry_wait: float = 60.0,
        concurrency: int = 2,
        batch_size: int = 8,
        width: int | None = None,
        height: int | None = None,
        sampler: str | None = None,
        name: str | None = None,
    ) -> None:
        problems = url_problems(url)
        if api not in FORMATS:
            problems.append(f"unknown api {api!r} (valid: {', '.join(FORMATS)})")
        if token_env is not None and not os.environ.get(token_env):
            problems.append(f"the environment variable {token_env} (the API token) is not set")
        if concurrency < 1 or batch_size < 1 or retries < 0 or timeout <= 0 or request_timeout <= 0:
            problems.append("concurrency and batch_size must be >= 1, retries >= 0, timeout and request_timeout > 0")
        if backoff < 0 or max_retry_wait < 0:
            problems.append("backoff and max_retry_wait must be >= 0")
        if any(size is not None and size < 8 for size in (width, height)):
            problems.append(f"width and height must be >= 8 pixels, got {width} x {height}")
        if problems:
            raise ConfigError("HTTP target: " + "; ".join(problems))
        self.url, self.api, self.token_env = url.strip().rstrip("/"), api, token_env
        self.timeout, self.request_timeout = timeout, request_timeout
        self.retries, self.backoff, self.max_retry_wait = retries, backoff, max_retry_wait
        self.concurrency, self.batch_size, self.sampler = concurrency, batch_size, sampler
        self.width, self.height = width, height
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the wait before a retry (tests replace it)
        # the fingerprint names the endpoint, never the token; ``name`` pins it when the URL changes
        size = f",size={width}x{height}" if width or height else ""
        self.fingerprint = f"http({name or self.url},api={api},sampler={sampler}{size})"
        self.requests = 0  # requests answered (with any status)

    # --- the wire ----------------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.token_env is None:
            return {}
        return {"Authorization": f"Bearer {os.environ.get(self.token_env, '')}"}

    def _scrub(self, text: str) -> str:
        """A server's text without the token, should the server echo it."""
        token = os.environ.get(self.token_env, "") if self.token_env else ""
        return text.replace(token, "***") if token else text

    async def _exchange(
        self, client: httpx.AsyncClient, method: str, url: str, body: dict[str, Any] | None
    ) -> tuple[int, httpx.Headers, bytes]:
        async with client.stream(method, url, json=body, headers=self._headers()) as response:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise TargetError(f"{url} sent an answer of more than {MAX_ANSWER_BYTES:,} bytes")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    async def _request(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        retries: int | None = None,
    ) -> Any:
        """The JSON answer of one request, retried while its faults are transient."""
        retries = self.retries if retries is None else retries
        where = self.url + path
        for attempt in range(retries + 1):
            wait = min(self.backoff * 2**attempt * (0.5 + random.random()), self.max_retry_wait)
            asked: float | None = None
            try:
                async with asyncio.timeout(self.request_timeout):
                    status, headers, content = await self._exchange(client, method, where, body)
            except TimeoutError:
                problem = f"no complete answer within target.request_timeout = {self.request_timeout:g} s"
            except TRANSIENT_ERRORS as exc:
                problem = self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                raise TargetError(self._scrub(f"{where}: {type(exc).__name__}: {exc}")) from None
            else:
                self.requests += 1
                if status < 300:
                    try:
                        return json.loads(content)
                    except ValueError:
                        raise TargetError(f"{where} answered with something that is not JSON") from None
                if not transient_status(status):
                    raise TargetError(self._refusal(where, status, headers, content))
                problem = f"HTTP {status}"
                asked = retry_after(headers.get("retry-after"))
                if asked is not None:
                    wait = max(wait, min(asked, self.max_retry_wait))
            if attempt == retries:
                hint = "; is the server running at that address?" if problem.startswith("ConnectError") else ""
                tries = f"{retries + 1} attempt{'s' if retries else ''}"
                raise TargetError(f"{where} failed after {tries} (last: {problem}){hint}")
            if wait > NOTICE_AFTER:
                capped = (
                    f" with Retry-After: {asked:.0f}, capped by target.max_retry_wait" if (asked or 0) > wait else ""
                )
                log.info(
                    f"{where}: {problem}{capped}; waiting {wait:.0f} s before attempt {attempt + 2} of {retries + 1}"
                )
            await self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _refusal(self, where: str, status: int, headers: httpx.Headers, content: bytes) -> str:
        """What a final (not transient) error status means, and what to do about it."""
        if status in (401, 403) and self.token_env:
            hint = f"the server refused the token in ${self.token_env}"
        elif status in (401, 403):
            hint = "the server wants a token: put it in an environment variable and name it in target.token_env"
        elif status in (404, 405):
            hint = f"no such route: is this {DESCRIBED[self.api]} (target.api = {self.api!r})?"
        elif 300 <= status < 400:
            hint = (
                f"a redirect to {redact(headers.get('location', '?'))}; set target.url to where it points "
                "(a token is never sent on to another address)"
            )
        else:
            hint = "a refusal that retrying does not mend"
        text = " ".join(self._scrub(content.decode("utf-8", "replace")).split())[:200]
        return f"{where} answered HTTP {status}: {hint}" + (f" (the server said: {text})" if text else "")

    async def _with_client(self, jobs: Sequence[Callable[[httpx.AsyncClient], Awaitable[_T]]]) -> list[_T]:
        """Run ``jobs`` on one client, at most ``concurrency`` at a time; the first error cancels the rest."""
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(job: Callable[[httpx.AsyncClient], Awaitable[_T]], client: httpx.AsyncClient) -> _T:
            async with gate:
                return await job(client)

        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, follow_redirects=False) as client:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(one(job, client)) for job in jobs]
            except BaseExceptionGroup as errors:
                raise errors.exceptions[0] from None
        return [task.result() for task in tasks]

    # --- the formats -------------------------------------------------------------------------------------------

    async def _a1111(self, client: httpx.AsyncClient, query: Query) -> list[Image.Image]:
        body: dict[str, Any] = {
            "prompt": query.prompt,
            "negative_prompt": query.negative_prompt,
            "seed": query.seed,
            "steps": query.steps,
            "cfg_scale": query.guidance,
            "batch_size": 1,
            "n_iter": 1,
        }
        if self.sampler:
            body["sampler_name"] = self.sampler
        path = "/sdapi/v1/txt2img"
        if query.init_image is not None:
            init = load_rgb(query.init_image)
            width, height = init.size
            if query.width or query.height:  # as the diffusers target resizes the init image
                width, height = query.width or query.height or width, query.height or query.width or height
            body |= {"init_images": [encode_png(init)], "denoising_strength": query.strength}
            path = "/sdapi/v1/img2img"
        else:
            width = query.width or self.width or A1111_SIZE
            height = query.height or self.height or A1111_SIZE
        body |= {"width": width, "height": height}
        return self._images(await self._request(client, "POST", path, body), 1, path)

    async def _diffmia(self, client: httpx.AsyncClient, queries: Sequence[Query]) -> list[Image.Image]:
        items = []
        for q in queries:
            item = dict(q.identity())
            item.pop("init_image_sha256")
            item["init_image"] = encode_png(load_rgb(q.init_image)) if q.init_image is not None else None
            if q.init_image is None:
                item["width"], item["height"] = q.width or self.width, q.height or self.height
            items.append(item)
        payload = await self._request(client, "POST", "/v1/generate", {"queries": items})
        return self._images(payload, len(queries), "/v1/generate")

    def _images(self, payload: Any, expected: int, path: str) -> list[Image.Image]:
        where = self.url + path
        images = payload.get("images") if isinstance(payload, dict) else None
        if not isinstance(images, list):
            raise TargetError(f"{where} answered without an 'images' list")
        if len(images) != expected:
            raise TargetError(f"{where} returned {len(images)} images for {expected} queries")
        return [decode_png(item, f"answer {i} of {where}") for i, item in enumerate(images)]

    # --- the target --------------------------------------------------------------------------------------------

    def generate(self, queries: Sequence[Query]) -> list[Image.Image]:
        jobs: list[Callable[[httpx.AsyncClient], Awaitable[list[Image.Image]]]]
        if self.api == "a1111":
            jobs = [lambda client, q=q: self._a1111(client, q) for q in queries]  # type: ignore[misc]
        else:
            groups = [list(queries[i : i + self.batch_size]) for i in range(0, len(queries), self.batch_size)]
            jobs = [lambda client, g=g: self._diffmia(client, g) for g in groups]  # type: ignore[misc]
        parts = _run(self._with_client(jobs))
        return [image for part in parts for image in part]

    def probe(self) -> None:
        """One cheap request with the token (``GET /health`` of diffmia serve, ``GET /sdapi/v1/sd-models`` of
        AUTOMATIC1111), so that an unreachable endpoint, a refused token or another API fails before any work."""
        path = PROBES[self.api]

        async def ask(client: httpx.AsyncClient) -> Any:
            return await self._request(client, "GET", path, retries=min(self.retries, 1))

        try:
            (payload,) = _run(self._with_client([ask]))
        except TargetError as exc:
            raise TargetError(f"the target does not answer as it should: {exc}") from None
        fits = (
            isinstance(payload, list)
            if self.api == "a1111"
            else (isinstance(payload, dict) and payload.get("status") == "ok")
        )
        if not fits:
            raise TargetError(
                f"{self.url}{path} answered, but not as {DESCRIBED[self.api]} does: is target.api = {self.api!r} right?"
            )


class HTTPTargetConfig(TargetSection):
    """A remote endpoint (``kind = "http"``): an AUTOMATIC1111 web UI started with ``--api`` or ``diffmia serve``;
    see :class:`~diffmia.targets.http.HTTPTarget`. The base model and the shadows an audit fine-tunes run locally
    with the default device and dtype."""

    kind: Literal["http"] = "http"
    url: str | None = None  # the endpoint's base URL, without credentials or ?query (a token goes in token_env)
    api: Literal["a1111", "diffmia"] = "diffmia"
    token_env: str | None = None  # the environment variable holding the endpoint's bearer token (never written)
    timeout: Annotated[float, Field(gt=0.0)] = 120.0  # seconds an HTTP request may stall in any one phase
    request_timeout: Annotated[float, Field(gt=0.0)] = 300.0  # seconds one HTTP request may take in all
    retries: Annotated[int, Field(ge=0)] = 4
    max_retry_wait: Annotated[float, Field(ge=0.0)] = 60.0  # the longest wait before a retry, whatever Retry-After asks
    concurrency: Annotated[int, Field(ge=1)] = 2
    batch_size: Annotated[int, Field(ge=1)] = 8  # queries per request (the diffmia format)
    # size of text-to-image answers where the query has none; unset: 512 x 512 for a1111 (AUTOMATIC1111's
    # default: set your model's native size), the served model's own for diffmia
    width: Annotated[int, Field(ge=8)] | None = None
    height: Annotated[int, Field(ge=8)] | None = None  # see target.width

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str | None) -> str | None:
        if url is not None and (problems := url_problems(url)):
            raise SecretInput("; ".join(problems))
        return url

    @model_validator(mode="after")
    def _has_url(self) -> HTTPTargetConfig:
        if not self.url:
            raise ValueError("an http target needs a url")
        return self

    def build(self) -> HTTPTarget:
        return HTTPTarget(**self.model_dump(exclude={"kind"}))

    def probe(self) -> None:
        self.build().probe()

    def regime(self) -> dict[str, Any]:
        return {"given": True, **self.model_dump(exclude={"token_env"})}
