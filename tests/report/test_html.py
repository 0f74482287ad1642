"""report.html from a saved run (tests/data/run-v1): the verdict first, the numbers of result.json, every candidate
with its decision, missing images said so, and every value from the run escaped."""

from __future__ import annotations

import base64
import html
import io
import re

import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffmia.report import render_report

HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


def _auc(evaluation: dict) -> str:
    ci = evaluation["auc_interval"]
    return f"AUC {evaluation['auc']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


@pytest.mark.slow
def test_the_verdict_leads_with_the_numbers_of_the_run(run_dir, fixture_result, headline):
    page = render_report(run_dir).read_text()
    verdict = page[page.index('<section id="verdict">') : page.index("</section>")]
    assert page.index('<section id="verdict">') < page.index("Headline ROC") < page.index("Most exposed members")
    assert "Of 2 scenarios, 2 leak (I, III); headline controls at chance in every scenario." in verdict
    first, third = headline(fixture_result, "I"), headline(fixture_result, "III")
    assert first["tpr_at_fpr"][0]["tpr"] is None  # 20 non-members cannot resolve 1% FPR
    sentence = (
        "Scenario I (image + caption, half of D\u2032 real members): members are identified — TPR at 1% FPR not "
        f"resolved with 20 non-members ({_auc(first)}); controls at chance."
    )
    assert html.escape(sentence, quote=False) in verdict
    assert "(AUC 0.980 [0.947, 1.000])" in verdict  # the same, to 3 decimals, by hand
    sentence = (
        "Scenario III (image + caption, D\u2032 disjoint): members are identified — TPR at 1% FPR not resolved with "
        f"20 non-members ({_auc(third)}); controls at chance."
    )
    assert html.escape(sentence, quote=False) in verdict
    rows = verdict[verdict.index('<table class="verdicts">') : verdict.index("</table>")]
    assert rows.count('<span class="tag red">LEAK</span>') == 2
    assert "20 members and 20 non-members; query budget: 2 generations per image and channel (text2img, img2img)." in (
        verdict
    )
    assert "How to read the tags" in verdict and "AUC &gt;= 0.8" in verdict
    # one self-contained page that forbids scripts
    assert "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"" in page
    assert "<script" not in page and not re.search(r'src="(?!data:)', page)


@pytest.mark.slow
def test_a_resolved_tpr_is_quoted_in_the_verdict_and_tables(run_dir, edit_result, headline):
    def resolve(result):
        first = headline(result, "I")["tpr_at_fpr"][0]
        first.update(
            tpr=0.8537,
            achieved_fpr=0.0,
            threshold=1.25,
            reason=None,
            interval={"low": 0.61234, "high": 0.95, "confidence": 0.95},
        )

    edit_result(run_dir, resolve)
    page = render_report(run_dir).read_text()
    assert "members are identified — 85.4% of members at 1% false-positive rate (AUC 0.980 [0.947, 1.000])" in page
    assert "<td>0.854<br><small>FPR 0.0000; [0.612, 0.950]</small></td>" in page


@pytest.mark.slow
def test_missing_images_say_so_and_present_ones_are_inline(run_dir, edit_result, tmp_path):
    page = render_report(run_dir).read_text()
    exposed = page[page.index("Most exposed members") : page.index("Every candidate")]
    assert exposed.count("(image missing)") == 2 * (1 + 4)  # 2 members, 2 generations per channel each
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "member.png")
    edit_result(run_dir, lambda r: r["exposed"]["images"][0].update(image=str(tmp_path / "member.png")))
    page = render_report(run_dir).read_text()
    exposed = page[page.index("Most exposed members") : page.index("Every candidate")]
    assert exposed.count("(image missing)") == 2 * (1 + 4) - 1
    assert re.search(r'<img class="px" alt="digit-0118" src="data:image/png;base64,[A-Za-z0-9+/=]+">', exposed)


@pytest.mark.slow
def test_an_image_that_cannot_be_decoded_is_missing_not_a_crash(run_dir, edit_result, tmp_path, bomb_png):
    bomb_png(tmp_path / "bomb.png")
    (tmp_path / "text.png").write_text("not an image")
    edit_result(
        run_dir,
        lambda r: [
            r["exposed"]["images"][0].update(image=str(tmp_path / "bomb.png")),
            r["exposed"]["images"][1].update(image=str(tmp_path / "text.png")),
        ],
    )
    page = render_report(run_dir).read_text()
    exposed = page[page.index("Most exposed members") : page.index("Every candidate")]
    assert exposed.count("(image missing)") == 2 * (1 + 4)


def test_every_candidate_is_listed_with_rank_truth_and_decision(run_dir, fixture_result, headline):
    page = render_report(run_dir).read_text()
    rows = re.findall(
        r'<tr id="candidate-([^"]+)"><td class="l">([^<]+)</td>\s*<td class="l">(.*?)</td>\s*'
        r"<td>([^<]+)</td><td>(\d+)</td><td class=\"l\">([^<]+)</td><td class=\"l[^\"]*\">([^<]+)</td>",
        page,
    )
    assert len(rows) == 40
    ids = [r[1] for r in rows]
    assert ids == sorted(ids) and [r[0] for r in rows] == ids
    assert sorted(int(r[4]) for r in rows) == list(range(1, 41))
    scores = pq.read_table(run_dir / "scores.parquet").to_pylist()
    key = ("I", "target", "combined", "classifier")
    chosen = {s["sample_id"]: s for s in scores if (s["scenario"], s["model"], s["channel"], s["attack"]) == key}
    threshold = headline(fixture_result, "I")["threshold"]
    by_rank = sorted(chosen.values(), key=lambda s: -s["score"])
    for sample_id, _, image, score, rank, truth, decision in rows:
        row = chosen[sample_id]
        assert score == f"{row['score']:.3f}"
        assert by_rank[int(rank) - 1]["sample_id"] == sample_id
        assert truth == ("member" if row["member"] else "non-member")
        assert decision == ("member" if row["score"] >= threshold else "non-member")
        assert image == ("(image missing)" if sample_id in ("digit-0118", "digit-0520") else "-")
    assert sum(r[5] != r[6] for r in rows) == 4  # balanced accuracy 0.9 of 20 + 20: four wrong calls


@pytest.mark.slow
def test_every_candidate_gets_a_small_thumbnail_from_the_recorded_images(run_dir, edit_result, tmp_path):
    scores = pq.read_table(run_dir / "scores.parquet").to_pydict()
    ids = sorted(set(scores["sample_id"]))
    for i, sample_id in enumerate(ids):  # 512-pixel images, as real candidates are: embedded at 48 pixels
        Image.new("RGB", (512, 512), (i * 5, 0, 0)).save(tmp_path / f"{sample_id}.png")
    gone = ids[0]
    edit_result(run_dir, lambda r: r.update(candidate_images={i: str(tmp_path / f"{i}.png") for i in ids}))
    (tmp_path / f"{gone}.png").unlink()
    page = render_report(run_dir).read_text()
    table = page[page.index("Every candidate") :]
    thumbnails = re.findall(r'<img class="thumb" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', table)
    assert sorted(i for i, _ in thumbnails) == ids[1:]
    sizes = {Image.open(io.BytesIO(base64.b64decode(data))).size for _, data in thumbnails}
    assert sizes == {(48, 48)}
    assert f'<tr id="candidate-{gone}"><td class="l">{gone}</td>\n<td class="l">(image missing)</td>' in table


@pytest.mark.slow
def test_the_details_hold_every_evaluation_regime_and_pass(run_dir, fixture_result):
    page = render_report(run_dir).read_text()
    table = page[page.index('<table id="results">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr") == 1 + len(fixture_result["results"]) == 43
    assert table.count('class=" headline"') == 2  # the headline of each scenario, in bold
    assert "<td>recipe.lora_target_modules</td><td>to_k, to_q, to_v, to_out.0</td>" in page
    assert "<td>recipe.learning_rate</td><td>0.001</td>" in page
    assert '<th class="l">shadow-overlap-0</th>' in page
    timings = page[page.index('<details id="timings">') :]
    assert "pass 1 (2026-12-01 16:10:22 UTC)" in timings
    assert '<tr><td class="l">total (before the report)</td><td>78.9</td></tr>' in timings
    assert "<td>versions.torch</td><td>2.13.0+cpu</td>" in page


def test_values_from_the_run_are_escaped(run_dir, edit_result, rename_sample):
    script, image = HOSTILE

    def hostile(result):
        result["name"] = f"run {script}"
        result["exposed"]["images"][0]["prompt"] = f"a seven {script} {image}"
        result["models"]["target"]["recipe"]["lr_scheduler"] = image
        result["models"][f"shadow {image}"] = {"note": script}
        result["captioners"] = {"captioner": {"card": {"model": script, "tags": [image, "x"]}}}
        result["warnings"] = [f"careful {script}"]
        result["data"]["source"] = image

    edit_result(run_dir, hostile)
    rename_sample(run_dir, "digit-0085", f"digit {image}")
    page = render_report(run_dir).read_text()
    assert "<script" not in page and "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5
    assert page.count("&#34;&gt;&lt;img src=x onerror=alert(1)&gt;") >= 5
    assert '<tr id="candidate-digit____img_src_x_onerror_alert_1__">' in page  # the row's id: no odd characters
