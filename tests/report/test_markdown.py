"""report.md from a saved run: the same verdict as the page, its tables whole whatever the run's text holds."""

from __future__ import annotations

import re

import pytest

from diffmia.errors import DataError
from diffmia.report import render_markdown
from diffmia.report.markdown import escape

HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


def _cells(line: str) -> list[str]:
    """A table row's cells, split on the pipes that are not escaped."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(text: str) -> list[list[list[str]]]:
    tables: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(_cells(line))
        previous = line
    return tables


def _whole(text: str) -> None:
    """Every row of every table has its header's number of cells."""
    for table in _tables(text):
        assert all(len(row) == len(table[0]) for row in table), table[0]


def test_markdown_holds_the_verdict_headlines_exposed_members_and_regimes(run_dir, fixture_result, headline):
    text = render_markdown(run_dir).read_text()
    assert text.startswith("# Membership audit: legacy\n")
    assert "**Of 2 scenarios, 2 leak (I, III); headline controls at chance in every scenario.**" in text
    first, third = headline(fixture_result, "I"), headline(fixture_result, "III")
    auc = f"AUC {first['auc']:.3f} [{first['auc_interval']['low']:.3f}, {first['auc_interval']['high']:.3f}]"
    assert auc == "AUC 0.980 [0.947, 1.000]"
    assert (
        "| LEAK | I | Scenario I (image + caption, half of D\u2032 real members): members are identified — TPR at 1% "
        f"FPR not resolved with 20 non-members ({auc}); controls at chance. |"
    ) in text
    assert (
        f"| LEAK | III | Scenario III (image + caption, D\u2032 disjoint): members are identified — TPR at 1% FPR not "
        f"resolved with 20 non-members (AUC {third['auc']:.3f} [0.935, 1.000]); controls at chance. |"
    ) in text
    assert (
        "20 members and 20 non-members; query budget: 2 generations per image and channel (text2img, img2img)." in text
    )
    assert "- **WEAK LEAK**: the AUC's interval lies above 0.5, but AUC < 0.8." in text
    assert "| target (headline) | combined | classifier | 0.980 [0.947, 1.000] | n/a | n/a | 0.900 | 20 / 20 |" in text
    assert (
        "| base model (control) | combined | classifier | 0.565 [0.404, 0.743] | n/a | n/a | 0.525 | 20 / 20 |" in text
    )
    assert "| blind (control) | none | classifier | 0.562 [0.362, 0.728] | n/a | n/a | 0.625 | 20 / 20 |" in text
    assert (
        "| 1 | digit-0118 | 2.584 | a medium inky tilted broad large handwritten seven, placed middle centre |" in text
    )
    assert "data:image" not in text and "<img" not in text
    tables = _tables(text)
    (full,) = [t for t in tables if t[0][0] == "scenario"]
    assert len(full) == 2 + len(fixture_result["results"])  # header, rule, a row per score set
    (regimes,) = [t for t in tables if t[0][:2] == ["setting", "target"]]
    assert regimes[0] == ["setting", "target", "base", "shadow-overlap-0", "shadow-disjoint-0"]
    assert ["recipe.learning_rate", "0.001", "-", "0.001", "0.001"] in regimes
    assert "| total (before the report) | 78.9 |" in text
    _whole(text)


def test_escape_keeps_text_literal_in_a_cell():
    assert escape("a | b\nc") == r"a \| b c"
    assert escape("<script>alert(1)</script>") == r"\<script\>alert(1)\</script\>"
    assert escape("[x](javascript:alert(1)) &lt; *e* `c`") == r"[x]\(javascript:alert(1)) \&lt; \*e\* \`c\`"
    assert escape("AUC 0.98 [0.9, 1.0]") == "AUC 0.98 [0.9, 1.0]"


def test_hostile_text_stays_text_and_tables_stay_whole(run_dir, edit_result, rename_sample):
    script, image = HOSTILE

    def hostile(result):
        result["name"] = f"run {script}"
        result["exposed"]["images"][0]["prompt"] = f"a seven {script} | {image}\n| fake | row |"
        result["models"]["target"]["recipe"]["lr_scheduler"] = f"{image} | x"
        result["models"][f"shadow {image}"] = {"note": script}
        result["warnings"] = [f"careful {script}\nsecond line"]
        result["data"]["source"] = image

    edit_result(run_dir, hostile)
    rename_sample(run_dir, "digit-0118", f"digit|{image}")
    text = render_markdown(run_dir).read_text()
    assert not re.search(r"(?<!\\)<[A-Za-z/!?]", text)  # no tag, comment or declaration: every < escaped
    row = next(line for line in text.splitlines() if line.startswith("| 1 | digit"))
    assert _cells(row) == [
        "1",
        r'digit\|"\>\<img src=x onerror=alert(1)\>',
        "2.584",
        r'a seven \<script\>alert(1)\</script\> \| "\>\<img src=x onerror=alert(1)\> \| fake \| row \|',
    ]
    assert r"- careful \<script\>alert(1)\</script\> second line" in text
    scheduler = next(line for line in text.splitlines() if line.startswith("| recipe.lr_scheduler |"))
    assert _cells(scheduler) == [
        "recipe.lr_scheduler",
        r'"\>\<img src=x onerror=alert(1)\> \| x',
        "-",
        "constant",
        "constant",
        "-",
    ]
    assert r'| setting | target | base | shadow-overlap-0 | shadow-disjoint-0 | shadow "\>\<img src=x' in text
    _whole(text)


def test_both_reports_say_how_a_shadow_chosen_headline_was_chosen(run_dir, edit_result):
    from diffmia.report import render_report

    def chosen(result):
        result["headline"] = {"I": ["combined", "classifier"], "III": ["combined", "classifier"]}
        rows = [
            ("combined", "classifier", 0.9512, 0.4),
            ("combined", "threshold", 0.99, 0.35),
            ("text2img", "threshold", 0.7, None),
        ]
        result["headline_validation"] = {
            "I": [
                {"channel": c, "attack": a, "auc": auc, "tpr": tpr, "fpr": 0.01, "folds": 5} for c, a, auc, tpr in rows
            ]
        }

    edit_result(run_dir, chosen)
    sentence = (
        "The headline was chosen on the shadows before the target was scored: out-of-fold TPR 0.40 at 1% FPR, "
        "AUC 0.951, the best of 3 candidates (all in result.json)."
    )
    markdown = render_markdown(run_dir).read_text()
    assert markdown.count(sentence) == 1  # scenario I only: III has no record of a choice (the fixed rule)
    assert markdown.index("### Scenario I ") < markdown.index(sentence) < markdown.index("### Scenario III ")
    assert render_report(run_dir).read_text().count(sentence) == 1

    def damaged(result):
        del result["headline_validation"]["I"][1]["tpr"]

    edit_result(run_dir, damaged)  # a hand-edited file: one line that names the schema, not a KeyError
    with pytest.raises(DataError, match=r"result\.json does not match its schema .*'tpr'.*rerun the audit"):
        render_markdown(run_dir)
