"""provenance.json written and read back; the reports say the verdict first, from the saved result alone."""

from __future__ import annotations

import json

import pytest

from diffmia.errors import DataError
from diffmia.provenance.result import Finding, ImageScore, ProvenanceResult, load_provenance, save_provenance
from diffmia.report.provenance import render_provenance, render_text
from diffmia.report.terminal import print_provenance
from diffmia.results import Pass


def _outcome(name: str, auc: float, p: float) -> Finding:
    return Finding(name, f"{name} features", 4, auc, auc - 0.1, min(auc + 0.1, 1.0), 0.42, 0.57, p, 0.001, 999, 5)


def _result(verdict: str = "used", p: float = 0.001) -> ProvenanceResult:
    return ProvenanceResult(
        name="owner",
        diffmia_version="test",
        verdict=verdict,
        reason=f"{verdict}: because",
        alpha=0.01,
        control_alpha=0.05,
        test=_outcome("target", 0.91, p),
        controls=(_outcome("base model", 0.52, 0.61), _outcome("blind", 0.48, 0.7)),
        suspects=2,
        references=2,
        prompts=("given",),
        evidence=("black-box: img2img",),
        channels=("img2img",),
        queries_per_image=3,
        images_requested={"target": 12, "base": 24},
        seeds={"provenance": 0},
        models={"target": "t", "base": "b"},
        weighing=(),
        scores=tuple(
            ImageScore(i, s, v)
            for i, s, v in (("a", True, 2.0), ("b", True, 1.0), ("c", False, -1.0), ("d", False, 0.5))
        ),
        passes=(Pass("2026-12-08 00:00:00 UTC", {"tests": 1.5}),),
    )


def test_the_result_round_trips_with_the_verdict_p_value_and_effect_at_the_top(tmp_path):
    result = _result()
    save_provenance(tmp_path, result)
    saved = json.loads((tmp_path / "provenance.json").read_text())
    assert (saved["verdict"], saved["p_value"], saved["effect"]) == ("used", 0.001, 0.91)
    assert [c["name"] for c in saved["controls"]] == ["base model", "blind"]
    loaded = load_provenance(tmp_path)
    assert loaded == result and loaded.run_dir == tmp_path


def test_a_damaged_or_newer_result_is_named(tmp_path):
    with pytest.raises(DataError, match=r"no provenance\.json"):
        load_provenance(tmp_path)
    (tmp_path / "provenance.json").write_text(json.dumps({"schema_version": 9}))
    with pytest.raises(DataError, match="schema version 9; this diffmia reads versions up to 1"):
        load_provenance(tmp_path)
    document = _result().to_dict()
    del document["test"]["p_value"]
    (tmp_path / "provenance.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"does not match its schema: .*'p_value'"):
        load_provenance(tmp_path)


def test_both_reports_and_the_terminal_lead_with_the_verdict(tmp_path, capsys):
    save_provenance(tmp_path, _result("inconclusive", 0.2))
    html, markdown = render_provenance(tmp_path)
    page = html.read_text()
    assert page.index("INCONCLUSIVE") < page.index("The test and its controls") < page.index("held-out score")
    assert 'class="tag amber"' in page and "0.910 [0.810, 1.000]" in page
    text = markdown.read_text()
    assert text.startswith("# Provenance: owner\n\n**INCONCLUSIVE**: inconclusive: because.")
    assert "| target | 0.910 [0.810, 1.000] | 0.420 to 0.570 | 0.2 | 0.001 | 4 | target features |" in text
    assert render_text(load_provenance(tmp_path)) == text
    print_provenance(load_provenance(tmp_path))
    out = capsys.readouterr().out
    assert out.startswith("Verdict: INCONCLUSIVE: inconclusive: because.")
    assert (
        "  base model: held-out AUC 0.520 [0.420, 0.620] (by chance 0.420 to 0.570), p = 0.61 (base model features)"
        in out
    )
