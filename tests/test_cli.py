"""The command line: results equal the library's; bad input ends in one `Error:` line, exit 2, no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from diffmia.attacks import ClassifierAttack, DistributionAttack, ThresholdAttack, fit_and_score
from diffmia.cli import main
from diffmia.metrics import evaluate
from diffmia.records import FeatureTable
from diffmia.tables import read_feature_table, read_metadata, write_feature_table


def _features(n, seed, labelled=True):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    X = rng.standard_normal((2 * n, 3)) + 0.8 * y[:, None]
    return FeatureTable(tuple(f"s{seed}-{i}" for i in range(2 * n)), X, ("a", "b", "c"), y if labelled else None)


@pytest.fixture
def scores_csv(tmp_path):
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(150, bool), np.zeros(150, bool)]
    score = rng.standard_normal(300) + member
    path = tmp_path / "scores.csv"
    pa_csv.write_csv(pa.table({"score": score, "member": member.astype(int)}), path)
    return path, score, member


def test_evaluate_json_equals_the_library(scores_csv, capsys):
    path, score, member = scores_csv
    assert main(["evaluate", str(path), "--json", "--threshold", "0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)["evaluations"]["score"]
    assert printed == evaluate(score, member, threshold=0.5).to_dict()
    assert (printed["n_members"], printed["n_nonmembers"]) == (150, 150)


def test_evaluate_table(scores_csv, capsys):
    path, score, member = scores_csv
    assert main(["evaluate", str(path)]) == 0
    out = capsys.readouterr().out
    ev = evaluate(score, member)
    assert f"{ev.auc:.3f}" in out and f"{ev.auc_interval.low:.3f}-{ev.auc_interval.high:.3f}" in out
    assert f"{ev.at(0.01).tpr:.3f}" in out and f"FPR {ev.at(0.01).achieved_fpr:.4f}" in out
    assert "150 / 150" in out
    assert "1/150" in out  # why TPR@0.1% FPR is n/a


def test_evaluate_several_columns(tmp_path, capsys):
    """`--column a --column b` evaluates each column against the same labels, in the order given."""
    rng = np.random.default_rng(5)
    member = np.r_[np.ones(80, bool), np.zeros(120, bool)]
    a = rng.standard_normal(200) + 1.5 * member  # a strong score
    b = np.round(rng.standard_normal(200) + 0.3 * member, 1)  # a weak one, with ties
    path = tmp_path / "two.csv"
    pa_csv.write_csv(pa.table({"a": a, "member": member.astype(int), "b": b}), path)
    assert main(["evaluate", str(path), "--column", "a", "-c", "b", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["evaluations"]
    assert list(printed) == ["a", "b"]
    assert printed["a"]["auc"] == pytest.approx(roc_auc_score(member, a), abs=1e-12)
    assert printed["b"]["auc"] == pytest.approx(roc_auc_score(member, b), abs=1e-12)
    assert printed["a"]["auc"] - printed["b"]["auc"] > 0.1  # two different columns, not one twice (0.83, 0.64)
    assert printed["b"] == evaluate(b, member).to_dict()
    assert (printed["b"]["n_members"], printed["b"]["n_nonmembers"]) == (80, 120)

    assert main(["evaluate", str(path), "--column", "b", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["evaluations"]) == ["b"]

    assert main(["evaluate", str(path), "--column", "a", "--column", "nope", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("Error: ")
    assert "no column 'nope'" in captured.err and "'a'" not in captured.err


def test_attack_writes_scores_and_evaluates(tmp_path, capsys):
    shadow, target = _features(60, 1), _features(60, 2)
    write_feature_table(shadow, tmp_path / "shadow.parquet")
    write_feature_table(target, tmp_path / "target.parquet")
    out = tmp_path / "out" / "scores.parquet"
    code = main(
        [
            "attack",
            "--shadow",
            str(tmp_path / "shadow.parquet"),
            "--target",
            str(tmp_path / "target.parquet"),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)["evaluations"]
    table = pq.read_table(out)
    assert table.column_names == ["sample_id", "member", "threshold", "distribution", "classifier"]
    expected = fit_and_score(
        {
            "threshold": ThresholdAttack(),
            "distribution": DistributionAttack(),
            "classifier": ClassifierAttack(),
        },
        shadow,
        target,
    )
    for name, scores in expected.items():
        np.testing.assert_allclose(table[name].to_numpy(), scores)
        assert printed[name] == evaluate(scores, target.y, threshold=0.0).to_dict()
    assert read_metadata(out)["n_shadow"] == 120
    assert read_feature_table(tmp_path / "target.parquet").names == ("a", "b", "c")


def test_attack_on_an_unlabelled_target_with_one_attack(tmp_path, capsys):
    write_feature_table(_features(30, 1), tmp_path / "shadow.parquet")
    write_feature_table(_features(30, 2, labelled=False), tmp_path / "target.parquet")
    out = tmp_path / "scores.csv"
    args = [
        "attack",
        "--shadow",
        str(tmp_path / "shadow.parquet"),
        "--target",
        str(tmp_path / "target.parquet"),
    ]
    assert main([*args, "--out", str(out), "--attack", "threshold"]) == 0
    assert "scored 60 target samples" in capsys.readouterr().out
    assert pa_csv.read_csv(out).column_names == ["sample_id", "threshold"]


def _write(path, text):
    path.write_text(text)
    return path


BAD_SCORES = {
    "one class": ("score,member\n0.1,1\n0.2,1\n", "0 non-members"),
    "NaN score": ("score,member\n0.1,1\nnan,0\n0.3,0\n", "column 'score' has 1 missing, NaN or infinite"),
    "missing column": ("value,member\n0.1,1\n0.2,0\n", "no column 'score'"),
    "empty file": ("", "is empty"),
    "header only": ("score,member\n", "no rows"),
    "bad labels": ("score,member\n0.1,1\n0.2,2\n", "true/false or 1/0, found 2"),
}


@pytest.mark.parametrize("case", BAD_SCORES)
def test_evaluate_bad_input_is_one_error_line(case, tmp_path, capsys):
    text, message = BAD_SCORES[case]
    assert main(["evaluate", str(_write(tmp_path / "s.csv", text))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("Error: ")
    assert message in captured.err


BAD_ATTACK_INPUTS = {
    "misspelt config key": ("config", "[attacks.clasifier]\nalpha = 1\n", "did you mean 'classifier'?"),
    "shadow without labels": ("shadow", "sample_id,a\nx,1\ny,2\n", "no membership labels"),
    "NaN feature": (
        "target",
        "sample_id,a\nx,1\ny,nan\n",
        "column 'a' has 1 missing, NaN or infinite values",
    ),
    "duplicate ids": ("target", "sample_id,a\nx,1\nx,2\n", "duplicated 'sample_id'"),
    "missing feature": ("target", "sample_id,b\nx,1\ny,2\n", "the target lacks a"),
    "empty target": ("target", "", "is empty"),
}


@pytest.mark.parametrize("case", BAD_ATTACK_INPUTS)
def test_attack_bad_input_leaves_no_output(case, tmp_path, capsys):
    which, text, message = BAD_ATTACK_INPUTS[case]
    files = {
        "shadow": _write(tmp_path / "shadow.csv", "sample_id,member,a\np,1,3\nq,1,2\nr,0,1\ns,0,0\n"),
        "target": _write(tmp_path / "target.csv", "sample_id,a\nx,1\ny,2\n"),
        "config": _write(tmp_path / "c.toml", ""),
    }
    _write(files[which], text)
    out = tmp_path / "scores.parquet"
    args = ["attack", "--shadow", str(files["shadow"]), "--target", str(files["target"]), "--out", str(out)]
    assert main([*args, "--config", str(files["config"])]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("Error: ")
    assert message in captured.err
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []


def test_an_output_folder_that_cannot_be_made_is_one_error_line(tmp_path, capsys):
    blocker = _write(tmp_path / "file", "")
    shadow = _write(tmp_path / "shadow.csv", "sample_id,member,a\np,1,3\nq,1,2\nr,0,1\ns,0,0\n")
    target = _write(tmp_path / "target.csv", "sample_id,a\nx,1\ny,2\n")
    out = blocker / "sub" / "scores.parquet"
    commands = {
        "attack": ["attack", "--shadow", str(shadow), "--target", str(target), "--out", str(out), "-a", "threshold"],
        "data digits": ["data", "digits", str(blocker / "digits")],
    }
    for command in commands.values():
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("Error: cannot ") and f"{blocker} is a file, not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "shadow.csv", "target.csv"]


def test_usage_errors_exit_2(capsys):
    assert main(["attack", "--shadow", "s.csv"]) == 2  # --target and --out missing
    assert "Missing option" in capsys.readouterr().err


def test_unknown_attack_name_lists_the_valid_ones(tmp_path, capsys):
    args = ["attack", "--shadow", "s.csv", "--target", "t.csv", "--out", str(tmp_path / "o.parquet")]
    assert main([*args, "--attack", "nearest"]) == 2
    assert capsys.readouterr().err == (
        "Error: --attack: 1 problem: attacks.use.0: input should be "
        "'threshold', 'distribution' or 'classifier' (got 'nearest')\n"
    )


def test_config_show_prints_the_resolved_config(tmp_path, capsys):
    assert main(["config", "show", str(_write(tmp_path / "c.toml", "[evaluation]\nseed = 3\n"))]) == 0
    out = capsys.readouterr().out
    assert "seed = 3" in out and 'covariance = "diagonal"' in out


@pytest.mark.slow
def test_console_script_and_module_entry_points(tmp_path):
    """The installed `diffmia` script and `python -m diffmia`: version; a DiffmiaError is one line, exit 2."""
    bin_dir = os.path.dirname(sys.executable)
    script = os.path.join(bin_dir, "diffmia")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("diffmia ")
    missing = str(tmp_path / "nope.csv")
    result = subprocess.run([sys.executable, "-m", "diffmia", "evaluate", missing], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"Error: {missing} does not exist or is not a file\n"
