"""The report in a real browser (headless Chromium): the verdict above the fold at 1280x800, and a caption that
holds a script shown as text and never run, even with the page's Content-Security-Policy removed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmia.report import render_report

pytestmark = pytest.mark.slow  # a real browser: seconds per page

LEAK_RED = (0xC6, 0x28, 0x28)  # the background of a LEAK tag; nothing else on the page is this colour
CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "diffmia-check";
  out.textContent = JSON.stringify({
    images: images.length,
    rendered: images.filter((im) => im.complete && im.naturalWidth > 0).length,
    rows: document.querySelectorAll("#results tr").length,
    candidates: document.querySelectorAll("#candidate-table tr[id]").length,
    caption: document.querySelector("td.caption").textContent,
    injected: typeof window.injected,
    verdictBottom: document.getElementById("verdict").getBoundingClientRect().bottom,
    viewport: [window.innerWidth, window.innerHeight],
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture
def chromium(tmp_path):
    if os.environ.get("DIFFMIA_NO_BROWSER") == "1":
        pytest.skip("DIFFMIA_NO_BROWSER=1")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed: `make test` installs Debian's chromium package"

    def run(page: Path, *args: str) -> str:
        return subprocess.run(
            [
                found,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1280,800",
                *args,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    return run


def test_the_verdict_is_above_the_fold(run_dir, tmp_path, chromium):
    page = render_report(run_dir)
    shot = tmp_path / "report.png"
    chromium(page, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (800, 1280)
    red = (pixels == LEAK_RED).all(axis=-1)
    rows = np.flatnonzero(red.sum(axis=1) >= 100)  # rows crossing a whole tag (about 135 px wide)
    tags = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if rows.size else []
    assert len(tags) == 2, "both scenarios' LEAK tags must be on the first screen"
    assert all(len(t) >= 15 for t in tags)  # whole tags, not a line of a figure


def test_the_page_renders_and_never_runs_a_caption(run_dir, tmp_path, chromium, edit_result):
    hostile = "<script>window.injected = 1</script> a <b>bold</b> two"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "member.png")
    edit_result(run_dir, lambda r: r["exposed"]["images"][0].update(prompt=hostile, image=str(tmp_path / "member.png")))
    text = render_report(run_dir).read_text()
    assert "default-src 'none'" in text  # the report forbids scripts itself
    assert hostile not in text and "&lt;script&gt;window.injected = 1&lt;/script&gt;" in text
    # the check runs with that policy removed: escaping alone must keep the caption inert
    checked = tmp_path / "checked.html"
    checked.write_text(
        re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text).replace("</body>", CHECK + "</body>")
    )
    dom = chromium(checked, "--virtual-time-budget=10000", "--dump-dom")
    found = re.search(r'<pre id="diffmia-check">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    check = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    # 2 ROC + 6 histograms + the one exposed member found, in its row and as a thumbnail
    assert check["images"] == 2 + 2 * 3 + 2 and check["rendered"] == check["images"]
    assert check["rows"] == 1 + 42 and check["candidates"] == 40
    assert check["caption"] == hostile  # shown as text
    assert check["injected"] == "undefined"  # and never run
    width, height = check["viewport"]  # less than the window where the browser keeps room for its own frame
    assert width == 1280 and check["verdictBottom"] <= height <= 800
