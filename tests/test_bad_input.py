"""The bad-input catalogue: every kind of bad input that docs/bad-input.md lists, through the command line.

Each ends with exit status 2, exactly one ``Error:`` line on stderr that names the problem, nothing on stdout, no
traceback, and no file created or changed anywhere under the test's folder (the working directory included).
Bad requests to ``diffmia serve`` are answered with a 4xx status and a one-line JSON error instead.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bombs import BOMB_PNG
from diffmia.cli import main
from loopback import serving

DOC = Path(__file__).parents[1] / "docs" / "bad-input.md"


@dataclass(frozen=True)
class Context:
    url: str  # the fake AUTOMATIC1111 server's base URL
    write_run: Callable  # the conftest fixture writing a finished run directory


@dataclass(frozen=True)
class Bad:
    """One kind of bad input: ``make`` writes it under a folder (an HTTP answer: under the fake server's base URL)
    and returns the command line; ``says`` must appear in the Error line."""

    group: str
    kind: str
    make: Callable[[Path, Context], list[str]]
    says: str


def png(path: Path, size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def folder(root: Path, metadata: str | bytes | None = None, *, image: bytes | None = None) -> Path:
    """An image folder of one image ``a.png`` (``image``: its bytes instead of a PNG) with ``metadata``."""
    if image is None:
        png(root / "a.png")
    else:
        root.mkdir(parents=True, exist_ok=True)
        (root / "a.png").write_bytes(image)
    if metadata is None:
        metadata = '{"file_name": "a.png", "caption": "a red square"}\n'
    (root / "metadata.jsonl").write_bytes(metadata if isinstance(metadata, bytes) else metadata.encode())
    return root


def text(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def scores_csv(path: Path, body: str = "member,score\n1,0.9\n0,0.2\n1,0.7\n0,0.4\n") -> Path:
    return text(path, body)


def features(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


SHADOW = {"sample_id": ["a", "b", "c", "d"], "member": [True, False, True, False], "f1": [0.9, 0.1, 0.8, 0.3]}


def generate(tmp: Path, data: Path, target: str = "", cache: Path | None = None) -> list[str]:
    """``diffmia generate`` of one text-to-image query per image of ``data`` (a local builtin target unless
    ``target`` gives another [target] section) into ``cache`` (default: tmp/cache)."""
    target = target or '[target]\nmodel = "builtin"\n'
    cache = cache or tmp / "cache"
    config = text(
        tmp / "generate.toml",
        f'{target}\n[generation]\ndata = "{data}"\ncache = "{cache}"\n'
        'channels = ["text2img"]\nqueries_per_image = 1\nsteps = 2\n',
    )
    return ["generate", str(config)]


def answer(tmp: Path, url: str, case: str) -> list[str]:
    """``diffmia generate`` against the fake AUTOMATIC1111 server's route for ``case``."""
    target = f'[target]\nkind = "http"\nurl = "{url}/{case}"\napi = "a1111"\nretries = 0\nwidth = 8\nheight = 8\n'
    return generate(tmp, folder(tmp / "data"), target)


def run_dir(tmp: Path, c: Context, change: Callable[[Path], None]) -> Path:
    """A finished run directory (one scenario, 4 samples) with ``change`` applied to it."""
    columns = {
        "scenario": ["I"] * 4,
        "model": ["target"] * 4,
        "channel": ["text2img"] * 4,
        "attack": ["classifier"] * 4,
        "sample_id": ["m0", "m1", "n0", "n1"],
        "member": [1, 1, 0, 0],
        "score": [0.9, 0.8, 0.1, 0.2],
    }
    root = tmp / "run"
    c.write_run(root, columns, ["I"], ["text2img"])
    change(root)
    return root


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


JPEG = io.BytesIO()
Image.new("RGB", (8, 8), "red").save(JPEG, format="JPEG")
PNG = io.BytesIO()
Image.new("RGB", (8, 8), "red").save(PNG, format="PNG")

# (the answer the fake server gives to txt2img for each case: status, JSON body or raw bytes)
ANSWERS: dict[str, tuple[int, object]] = {
    "no-images": (200, {"info": "done"}),
    "number": (200, {"images": [123]}),
    "jpeg": (200, {"images": [base64.b64encode(JPEG.getvalue()).decode()]}),
    "bomb": (200, {"images": [base64.b64encode(BOMB_PNG).decode()]}),
    "not-base64": (200, {"images": ["%%% not base64 %%%"]}),
    "two-images": (200, {"images": [base64.b64encode(PNG.getvalue()).decode()] * 2}),
    "not-json": (200, b"<html>busy</html>"),
    "no-route": (404, {"detail": "Not Found"}),
    "refused": (400, {"error": "prompt too long"}),
}

CATALOGUE = [
    # --- files given on the command line
    Bad("files", "scores file that does not exist", lambda t, c: ["evaluate", str(t / "nope.csv")], "nope.csv"),
    Bad("files", "empty scores file", lambda t, c: ["evaluate", str(text(t / "s.csv", ""))], "s.csv"),
    Bad(
        "files",
        "scores without a member column",
        lambda t, c: ["evaluate", str(scores_csv(t / "s.csv", "label,score\n1,0.9\n0,0.1\n"))],
        "'member'",
    ),
    Bad(
        "files",
        "member column that is not true/false or 1/0",
        lambda t, c: ["evaluate", str(scores_csv(t / "s.csv", "member,score\nyes,0.9\nno,0.1\n"))],
        "member",
    ),
    Bad(
        "files",
        "score column that is not numeric",
        lambda t, c: ["evaluate", str(scores_csv(t / "s.csv", "member,score\n1,high\n0,low\n"))],
        "score",
    ),
    Bad(
        "files",
        "--column naming no column",
        lambda t, c: ["evaluate", str(scores_csv(t / "s.csv")), "--column", "loss"],
        "'loss'",
    ),
    Bad(
        "files",
        "Parquet file that is not Parquet",
        lambda t, c: ["evaluate", str(text(t / "s.parquet", b"PAR1 not really"))],
        "s.parquet",
    ),
    Bad(
        "files",
        "feature table without the shadow's feature columns",
        lambda t, c: [
            "attack",
            "--shadow",
            str(features(t / "shadow.parquet", SHADOW)),
            "--target",
            str(features(t / "target.parquet", {"sample_id": ["x"], "f2": [0.5]})),
            "--out",
            str(t / "out" / "scores.parquet"),
        ],
        "f1",
    ),
    Bad(
        "files",
        "shadow features of one class only",
        lambda t, c: [
            "attack",
            "--shadow",
            str(features(t / "shadow.parquet", SHADOW | {"member": [True] * 4})),
            "--target",
            str(features(t / "target.parquet", SHADOW)),
            "--out",
            str(t / "out" / "scores.parquet"),
        ],
        "one class only: members",
    ),
    Bad(
        "files",
        "--out in an unknown format",
        lambda t, c: [
            "attack",
            "--shadow",
            str(features(t / "shadow.parquet", SHADOW)),
            "--target",
            str(features(t / "target.parquet", SHADOW)),
            "--out",
            str(t / "scores.txt"),
        ],
        ".txt",
    ),
    # --- configuration files and options
    Bad("configs", "config file that does not exist", lambda t, c: ["run", str(t / "audit.toml")], "audit.toml"),
    Bad(
        "configs",
        "config that is not TOML",
        lambda t, c: ["run", str(text(t / "a.toml", "[audit\nname = 1"))],
        "a.toml",
    ),
    Bad(
        "configs",
        "config that is not UTF-8",
        lambda t, c: ["run", str(text(t / "a.toml", b'[audit]\nname = "caf\xe9"\n'))],
        "UTF-8",
    ),
    Bad(
        "configs",
        "unknown key in a config",
        lambda t, c: ["run", str(text(t / "a.toml", "[audit]\nshadow = 2\n"))],
        "audit.shadow",
    ),
    Bad(
        "configs",
        "value of the wrong type",
        lambda t, c: ["run", str(text(t / "a.toml", '[generation]\nsteps = "many"\n'))],
        "generation.steps",
    ),
    Bad(
        "configs",
        "value out of range",
        lambda t, c: ["run", str(text(t / "a.toml", "[generation]\nqueries_per_image = 0\n"))],
        "generation.queries_per_image",
    ),
    Bad(
        "configs",
        "credentials in a target URL",
        lambda t, c: ["run", str(text(t / "a.toml", '[target]\nkind = "http"\nurl = "http://me:s3cret@host:7860"\n'))],
        "carries credentials",
    ),
    Bad(
        "configs",
        "an http target without a url",
        lambda t, c: ["run", str(text(t / "a.toml", '[target]\nkind = "http"\n'))],
        "needs a url",
    ),
    Bad(
        "configs",
        "unknown attack name",
        lambda t, c: [
            "attack",
            "--shadow",
            str(features(t / "shadow.parquet", SHADOW)),
            "--target",
            str(features(t / "target.parquet", SHADOW)),
            "--out",
            str(t / "s.parquet"),
            "--attack",
            "lira",
        ],
        "attacks.use",
    ),
    Bad(
        "configs",
        "DP-SGD options without --dp",
        lambda t, c: [
            "finetune",
            "--model",
            "builtin",
            "--data",
            str(folder(t / "data")),
            "--out",
            str(t / "out"),
            "--epsilon",
            "8",
        ],
        "need --dp",
    ),
    Bad(
        "configs",
        "fine-tuning a model of a family diffmia cannot train",
        lambda t, c: [
            "finetune",
            "--model",
            str(text(t / "pixart" / "model_index.json", '{"_class_name": "PixArtAlphaPipeline"}').parent),
            "--data",
            str(folder(t / "data")),
            "--out",
            str(t / "out"),
        ],
        "this model is a PixArtAlphaPipeline",
    ),
    Bad(
        "configs",
        "a threshold attack on a feature the audit does not compute",
        lambda t, c: [
            "run",
            str(
                text(
                    t / "a.toml",
                    f'[audit]\nruns_dir = "{t / "runs"}"\n[attacks.threshold]\nreduce = "pixels/l2/token001/mean"\n',
                )
            ),
        ],
        "is none of the features this audit computes",
    ),
    Bad(
        "configs",
        "generation without an image folder",
        lambda t, c: ["generate", str(text(t / "g.toml", "[generation]\nsteps = 2\n"))],
        "generation.data",
    ),
    # --- image folders and their metadata
    Bad("folders", "image folder that does not exist", lambda t, c: generate(t, t / "missing"), "does not exist"),
    Bad(
        "folders",
        "folder without metadata",
        lambda t, c: generate(t, png(t / "data" / "a.png").parent),
        "neither metadata.jsonl nor metadata.csv",
    ),
    Bad(
        "folders",
        "metadata that is not UTF-8",
        lambda t, c: generate(t, folder(t / "data", b'{"file_name": "a.png", "caption": "caf\xe9"}\n')),
        "UTF-8",
    ),
    Bad(
        "folders",
        "metadata line that is not JSON",
        lambda t, c: generate(t, folder(t / "data", '{"file_name": "a.png",\n')),
        "line 1: not valid JSON",
    ),
    Bad(
        "folders",
        "metadata line that is not an object",
        lambda t, c: generate(t, folder(t / "data", '["a.png"]\n')),
        "expected a JSON object",
    ),
    Bad(
        "folders",
        "file_name that is a number",
        lambda t, c: generate(t, folder(t / "data", '{"file_name": 7, "caption": "x"}\n')),
        "file_name",
    ),
    Bad(
        "folders",
        "record without a file_name",
        lambda t, c: generate(t, folder(t / "data", '{"caption": "x"}\n')),
        "records without a file_name: 1",
    ),
    Bad(
        "folders",
        "file_name of a missing image",
        lambda t, c: generate(t, folder(t / "data", '{"file_name": "b.png", "caption": "x"}\n')),
        "b.png",
    ),
    Bad(
        "folders",
        "an image listed twice",
        lambda t, c: generate(t, folder(t / "data", '{"file_name": "a.png", "caption": "x"}\n' * 2)),
        "a.png",
    ),
    Bad(
        "folders",
        "image without a caption where captions are needed",
        lambda t, c: generate(t, folder(t / "data", '{"file_name": "a.png"}\n')),
        "caption",
    ),
    Bad(
        "folders",
        "decompression bomb among the images",
        lambda t, c: generate(t, folder(t / "data", image=BOMB_PNG)),
        "decompression bomb",
    ),
    Bad("folders", "truncated image", lambda t, c: generate(t, folder(t / "data", image=PNG.getvalue()[:40])), "a.png"),
    Bad(
        "folders",
        "text file named .png",
        lambda t, c: generate(t, folder(t / "data", image=b"not an image at all")),
        "a.png",
    ),
    Bad(
        "folders",
        "output folder below a file",
        lambda t, c: ["data", "digits", str(text(t / "blocker", "") / "digits")],
        "is a file, not a folder",
    ),
    # --- run directories
    Bad(
        "run directories",
        "report of a folder that does not exist",
        lambda t, c: ["report", str(t / "no-run")],
        "does not exist",
    ),
    Bad(
        "run directories",
        "report of a folder without results",
        lambda t, c: ["report", str(png(t / "r" / "a.png").parent)],
        "result.json",
    ),
    Bad(
        "run directories",
        "result.json that is not JSON",
        lambda t, c: ["report", str(run_dir(t, c, lambda r: (r / "result.json").write_text("{ broken")))],
        "result.json",
    ),
    Bad(
        "run directories",
        "result.json of a newer diffmia",
        lambda t, c: [
            "report",
            str(run_dir(t, c, lambda r: edit_json(r / "result.json", lambda d: d.update(schema_version=99)))),
        ],
        "schema version 99",
    ),
    Bad(
        "run directories",
        "scores.parquet without its columns",
        lambda t, c: ["report", str(run_dir(t, c, lambda r: features(r / "scores.parquet", {"score": [0.5]})))],
        "scores.parquet",
    ),
    Bad(
        "run directories",
        "set-test of an unknown scenario",
        lambda t, c: ["set-test", str(run_dir(t, c, lambda r: None)), "--scenario", "IX"],
        "IX",
    ),
    Bad(
        "run directories",
        "set-test candidates that name no sample",
        lambda t, c: [
            "set-test",
            str(run_dir(t, c, lambda r: None)),
            "--candidates",
            str(text(t / "ids.txt", "zz0\nzz1\n")),
        ],
        "zz0",
    ),
    # --- generation caches
    Bad(
        "caches",
        "cache verify of a missing folder",
        lambda t, c: ["cache", "verify", str(t / "cache")],
        "does not exist",
    ),
    Bad(
        "caches",
        "cache folder below a file",
        lambda t, c: generate(t, folder(t / "data"), cache=text(t / "blocker", "") / "cache"),
        "is a file, not a folder",
    ),
    # --- answers of an HTTP target (a fake AUTOMATIC1111 server)
    *(
        Bad("HTTP answers", f"answer: {case}", lambda t, c, case=case: answer(t, c.url, case), says)
        for case, says in (
            ("no-images", "without an 'images' list"),
            ("number", "not a base64 string"),
            ("jpeg", "JPEG"),
            ("bomb", "decompression bomb"),
            ("not-base64", "not valid base64"),
            ("two-images", "returned 2 images for 1 queries"),
            ("not-json", "not JSON"),
            ("no-route", "HTTP 404"),
            ("refused", "prompt too long"),
        )
    ),
    Bad("HTTP answers", "endpoint that wants a token", lambda t, c: answer(t, c.url, "token"), "wants a token"),
    Bad(
        "HTTP answers",
        "endpoint that is not AUTOMATIC1111",
        lambda t, c: answer(t, c.url, "other-api"),
        "not as an AUTOMATIC1111 web UI",
    ),
    Bad(
        "HTTP answers",
        "nothing listening at the URL",
        lambda t, c: answer(t, "http://127.0.0.1:9", "x"),
        "is the server running",
    ),
    # --- diffmia serve's own options
    Bad(
        "serve",
        "--token-env naming an unset variable",
        lambda t, c: ["serve", "builtin", "--token-env", "DIFFMIA_CATALOGUE_UNSET"],
        "DIFFMIA_CATALOGUE_UNSET",
    ),
    Bad(
        "serve",
        "non-loopback --host without a token",
        lambda t, c: ["serve", "builtin", "--host", "0.0.0.0"],
        "--insecure",
    ),
    Bad("serve", "--lora that does not exist", lambda t, c: ["serve", "builtin", "--lora", str(t / "lora")], "lora"),
    # --- diffmia provenance: the two sets, the target
    Bad("provenance", "fewer suspects than folds", lambda t, c: provenance(t, suspects=4), "4 suspects"),
    Bad("provenance", "an image among both sets", lambda t, c: provenance(t, shared=True), "share images"),
    Bad("provenance", "images of two sizes", lambda t, c: provenance(t, size=16), "several sizes"),
    Bad(
        "provenance",
        "given captions missing",
        lambda t, c: provenance(t, captions=False, extra='[provenance]\nprompts = "given"\n'),
        "have none",
    ),
    Bad(
        "provenance",
        "a target that does not answer",
        lambda t, c: provenance(t, extra='[target]\nkind = "http"\nurl = "http://127.0.0.1:9"\nretries = 0\n'),
        "is the server running",
    ),
]


def provenance(
    tmp: Path, *, suspects: int = 6, shared: bool = False, size: int = 8, captions: bool = True, extra: str = ""
) -> list[str]:
    """``diffmia provenance`` of ``suspects`` flat images against six references (of ``size`` pixels, the first one
    a suspect's image when ``shared``), with the given ``extra`` config sections."""
    for name, n, first, side in (("s", suspects, 0, 8), ("r", 6, 100, size)):
        (tmp / name).mkdir()
        values = [0, *range(first + 1, first + n)] if shared and name == "r" else range(first, first + n)
        lines = []
        for i, value in enumerate(values):
            png(tmp / name / f"{i}.png", (side, side), (value, value, value))
            caption = f', "caption": "grey {value}"' if captions or name == "s" else ""
            lines.append(f'{{"file_name": "{i}.png", "id": "{name}{i}"{caption}}}')
        text(tmp / name / "metadata.jsonl", "\n".join(lines) + "\n")
    config = text(tmp / "p.toml", extra)
    out = str(tmp / "out")
    return ["provenance", str(tmp / "s"), str(tmp / "r"), "--base", "builtin", "--config", str(config), "--out", out]


def fake_a1111(scope_path: str) -> tuple[int, object]:
    """The fake server's answer to ``scope_path`` (/CASE/sdapi/v1/...): a model list to the probe, then the case's
    bad answer to txt2img ('token': 401 to everything; 'other-api': a probe answer that is not a list)."""
    case, _, route = scope_path.strip("/").partition("/")
    if case == "token":
        return 401, {"detail": "Not authenticated"}
    if route == "sdapi/v1/sd-models":
        return 200, ({"status": "ok"} if case == "other-api" else [{"title": "fake", "model_name": "fake"}])
    return ANSWERS.get(case, (404, {"detail": "Not Found"}))


async def fake_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    status, body = fake_a1111(scope["path"])
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": raw})


@pytest.fixture(scope="module")
def fake_server():
    with serving(fake_app) as url:
        yield url


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``root``: its modification time and content digest (folders: empty)."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", CATALOGUE, ids=[f"{b.group}: {b.kind}" for b in CATALOGUE])
def test_bad_input_is_one_error_line_and_changes_nothing(case, tmp_path, monkeypatch, capsys, fake_server, write_run):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written to a default relative path would land here
    monkeypatch.delenv("DIFFMIA_CATALOGUE_UNSET", raising=False)
    argv = case.make(work, Context(fake_server, write_run))
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert case.says in err, err
    assert snapshot(tmp_path) == before


def test_the_catalogue_is_documented_and_large():
    """docs/bad-input.md lists exactly the catalogue's kinds, group by group; at least 30 through the CLI."""
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \| `([^`]+)` \|$", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert rows == [(b.group, b.kind, b.says) for b in CATALOGUE] + [
        ("serve requests", r.kind, f"{r.status}: {r.says}") for r in REQUESTS
    ]
    assert len(CATALOGUE) >= 30 and len({b.kind for b in CATALOGUE}) == len(CATALOGUE)


# --- bad requests to `diffmia serve` ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str
    path: str
    body: bytes | dict | list | None  # None: a GET
    status: int
    says: str
    token: str | None = "catalogue-token"


def _png64(image: bytes = b"") -> str:
    return base64.b64encode(image or PNG.getvalue()).decode()


TXT = {"prompt": "a digit", "steps": 2, "width": 16, "height": 16}
REQUESTS = [
    Request("no token", "/sdapi/v1/txt2img", TXT, 401, "bearer token", token=None),
    Request("a wrong token", "/sdapi/v1/txt2img", TXT, 401, "bearer token", token="guess"),
    Request("an unknown route", "/sdapi/v1/extra-single-image", TXT, 404, "no route"),
    Request("GET of a generation route", "/v1/generate", None, 404, "no route"),
    Request("a body that is not JSON", "/v1/generate", b"{queries: [", 400, "not valid JSON"),
    Request("a body that is not UTF-8", "/v1/generate", b'{"queries": "\xff"}', 400, "not UTF-8"),
    Request("a JSON body that is not an object", "/v1/generate", [1, 2], 400, "JSON object"),
    Request("no queries", "/v1/generate", {"queries": []}, 400, "'queries'"),
    Request("a query without a prompt", "/v1/generate", {"queries": [{"seed": 1}]}, 400, "'prompt'"),
    Request("a body over the size limit", "/v1/generate", b"x" * 70_000, 413, "larger than the limit"),
    Request("too many images", "/sdapi/v1/txt2img", TXT | {"batch_size": 3, "n_iter": 2}, 422, "batch_size * n_iter"),
    Request("too many steps", "/sdapi/v1/txt2img", TXT | {"steps": 500}, 422, "steps is 500"),
    Request("a width over the limit", "/sdapi/v1/txt2img", TXT | {"width": 4096}, 422, "width is 4096"),
    Request("a width not a multiple of 8", "/sdapi/v1/txt2img", TXT | {"width": 20}, 422, "multiple of 8"),
    Request("a seed that is not an integer", "/sdapi/v1/txt2img", TXT | {"seed": "lucky"}, 400, "seed"),
    Request(
        "a strength outside (0, 1]",
        "/sdapi/v1/img2img",
        TXT | {"init_images": [_png64()], "denoising_strength": 1.5},
        422,
        "denoising_strength",
    ),
    Request(
        "an init image that is not base64", "/sdapi/v1/img2img", TXT | {"init_images": ["%%"]}, 422, "not valid base64"
    ),
    Request(
        "an init image that is a decompression bomb",
        "/sdapi/v1/img2img",
        TXT | {"init_images": [_png64(BOMB_PNG)]},
        422,
        "init_images[0]",
    ),
    Request(
        "a JPEG init image in the diffmia format",
        "/v1/generate",
        {"queries": [{"prompt": "a", "init_image": _png64(JPEG.getvalue()), "strength": 0.5}]},
        422,
        "PNG",
    ),
]


@pytest.fixture(scope="module")
def served(tiny_model):
    from diffmia.serve import Limits, make_app
    from diffmia.targets.diffusers import DiffusersTarget

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFMIA_CATALOGUE_TOKEN", "catalogue-token")
        limits = Limits(body_bytes=65_536, images=4, steps=50, side=64)
        with serving(make_app(DiffusersTarget(str(tiny_model)), "DIFFMIA_CATALOGUE_TOKEN", limits)) as url:
            yield url


@pytest.mark.parametrize("request_", REQUESTS, ids=[r.kind for r in REQUESTS])
def test_a_bad_request_to_serve_is_one_line_and_a_4xx(request_, served):
    headers = {"authorization": f"Bearer {request_.token}"} if request_.token else {}
    body = request_.body
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    answer = httpx.request(
        "GET" if body is None else "POST",
        served + request_.path,
        content=content,
        headers=headers | {"content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == request_.status, answer.text
    error = answer.json()["error"]
    assert isinstance(error, str) and "\n" not in error and "Traceback" not in error
    assert request_.says in error, error
