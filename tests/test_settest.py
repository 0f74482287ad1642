"""The set test: hand-computed rank-test p-values, calibration under the null, the curve, and `diffmia set-test`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from diffmia.cli import main
from diffmia.errors import DataError
from diffmia.settest import load_run_scores, set_test, set_test_curve


def test_exact_p_values_by_hand():
    # 3 candidates above 3 references: 1 of the C(6, 3) = 20 equally likely rankings is this extreme
    result = set_test([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
    assert (result.k, result.n_reference, result.auc) == (3, 3, 1.0)
    assert result.p_value == pytest.approx(1 / 20)
    # candidates ranked 1 and 5 of 5: U = 3; of the 10 rank pairs, 6 give U >= 3
    result = set_test([0.0, 4.0], [1.0, 2.0, 3.0])
    assert result.auc == pytest.approx(0.5)
    assert result.p_value == pytest.approx(6 / 10)


def test_large_samples_use_the_normal_approximation_with_continuity_correction():
    rng = np.random.default_rng(1)
    candidates, references = rng.normal(0.3, 1, 30), rng.normal(0, 1, 40)
    u = sum(float(c > r) for c in candidates for r in references)
    z = (u - 30 * 40 / 2 - 0.5) / math.sqrt(30 * 40 * (30 + 40 + 1) / 12)
    result = set_test(candidates, references)
    assert result.auc == pytest.approx(u / 1200)
    assert result.p_value == pytest.approx(norm.sf(z), rel=1e-9)


@pytest.mark.slow
def test_the_test_holds_its_level_when_candidates_are_not_members():
    rng = np.random.default_rng(0)
    p = np.array([set_test(rng.random(20), rng.random(80)).p_value for _ in range(2000)])
    # under the null a level-0.05 test rejects about 5% (binomial sd 0.5%): not more, or the test is invalid
    assert 0.035 < np.mean(p < 0.05) < 0.065
    assert 0.095 < np.mean(p < 0.1) < 0.13


def test_curve_on_perfectly_separated_scores():
    scores = np.r_[np.arange(100, 120), np.arange(40)].astype(float)  # 20 members above 40 non-members
    labels = np.r_[np.ones(20, bool), np.zeros(40, bool)]
    curve = set_test_curve(scores, labels, [1, 5, 20], repeats=30, seed=3)
    # k members against the 40 - k other non-members: the most extreme of C(40, k) rankings, every time
    np.testing.assert_allclose(curve.member_p[1], 1 / math.comb(40, 5))
    np.testing.assert_allclose(curve.member_p[0], 1 / 40)
    assert (curve.member_p[2] < 1e-6).all()
    rows = curve.rows()
    assert [r["n_reference"] for r in rows] == [39, 35, 20]
    assert rows[1]["member_share_p_below_0.001"] == 1.0 and rows[0]["member_share_p_below_0.001"] == 0.0
    again = set_test_curve(scores, labels, [1, 5, 20], repeats=30, seed=3)
    np.testing.assert_array_equal(again.nonmember_p, curve.nonmember_p)  # seeded


def test_bad_inputs():
    with pytest.raises(DataError, match="2 candidate scores are NaN or infinite"):
        set_test([1.0, np.nan, np.inf], [0.0])
    with pytest.raises(DataError, match="reference scores must be a non-empty list"):
        set_test([1.0], [])
    scores, labels = np.arange(10.0), np.r_[np.ones(5, bool), np.zeros(5, bool)]
    with pytest.raises(DataError, match=r"below the number of non-members \(5\).*k = 6, k = 5"):
        set_test_curve(scores, labels, [2, 6, 5])


@pytest.fixture
def run_dir(tmp_path, write_run):
    """A finished run's result.json and scores.parquet, written by hand: two scenarios, two channels."""
    rng = np.random.default_rng(0)
    ids = [f"m{i}" for i in range(10)] + [f"n{i}" for i in range(10)]
    member = [True] * 10 + [False] * 10
    columns = {k: [] for k in ("scenario", "model", "channel", "attack", "sample_id", "member", "score")}
    for scenario in ("III", "I"):
        for model in ("target", "base"):
            for channel in ("text2img", "img2img", "combined"):
                for attack in ("threshold", "classifier"):
                    columns["scenario"] += [scenario] * 20
                    columns["model"] += [model] * 20
                    columns["channel"] += [channel] * 20
                    columns["attack"] += [attack] * 20
                    columns["sample_id"] += ids
                    columns["member"] += member
                    columns["score"] += list(rng.normal(size=20) + np.array(member) * (model == "target"))
    write_run(tmp_path, columns, ["III", "I"], ["text2img", "img2img"])
    return tmp_path, columns


def _expected(columns, scenario, channel, attack, ids):
    picked = [
        i
        for i in range(len(columns["score"]))
        if (columns["scenario"][i], columns["model"][i], columns["channel"][i], columns["attack"][i])
        == (scenario, "target", channel, attack)
    ]
    by_id = {columns["sample_id"][i]: columns["score"][i] for i in picked}
    return [by_id[i] for i in ids]


def test_set_test_command_on_a_run_directory(run_dir, tmp_path, capsys):
    run, columns = run_dir
    chosen = load_run_scores(run)
    assert (chosen.scenario, chosen.channel, chosen.attack) == ("III", "combined", "classifier")  # the fixed rule
    (tmp_path / "ids.txt").write_text("m1\nm3\n\nn0\nm1\n")  # blank lines and repeats are ignored
    assert main(["set-test", str(run), "--candidates", str(tmp_path / "ids.txt"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    references = [f"n{i}" for i in range(1, 10)]  # the non-members that are not candidates
    expected = set_test(
        _expected(columns, "III", "combined", "classifier", ["m1", "m3", "n0"]),
        _expected(columns, "III", "combined", "classifier", references),
    )
    assert (printed["k"], printed["n_reference"]) == (3, 9)
    assert printed["p_value"] == pytest.approx(expected.p_value)
    assert json.loads((run / "set-test.json").read_text()) == printed

    assert (
        main(
            [
                "set-test",
                str(run),
                "--scenario",
                "I",
                "--channel",
                "img2img",
                "--attack",
                "threshold",
                "--k",
                "2",
                "--k",
                "5",
                "--repeats",
                "7",
                "--json",
            ]
        )
        == 0
    )
    curve = json.loads(capsys.readouterr().out)["curve"]
    scores = load_run_scores(run, "I", "img2img", "threshold")
    reference = set_test_curve(scores.scores, scores.labels, [2, 5], repeats=7, seed=0)
    assert curve["rows"] == reference.rows()


def test_set_test_command_errors(run_dir, tmp_path, capsys):
    run, _ = run_dir
    (tmp_path / "ids.txt").write_text("m1\nzz9\n")
    assert main(["set-test", str(run), "--candidates", str(tmp_path / "ids.txt")]) == 2
    assert "1 candidate id(s) are not among the run's scored images: zz9" in capsys.readouterr().err
    assert main(["set-test", str(run), "--candidates", "nonmembers"]) == 2
    assert "no reference non-members are left" in capsys.readouterr().err
    assert main(["set-test", str(run), "--scenario", "IV"]) == 2
    assert "no target scores for scenario IV, channel combined, attack classifier; available: I/combined/" in (
        capsys.readouterr().err
    )
    assert main(["set-test", str(tmp_path / "nothing")]) == 2
    assert f"run directory {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err


def test_a_broken_result_json_is_one_error_line(run_dir, capsys):
    run, _ = run_dir
    for broken in ('{"name": ', "[]", b"\xff\xfe"):
        if isinstance(broken, bytes):
            (run / "result.json").write_bytes(broken)
        else:
            (run / "result.json").write_text(broken)
        assert main(["set-test", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"Error: {run / 'result.json'} ") and "rerun the audit" in err
    assert not (run / "set-test.json").exists()
