"""`diffmia report RUN_DIR --format html|md`, and the verdict the terminal prints after `diffmia run`."""

from __future__ import annotations

import pytest

from diffmia.cli import main
from diffmia.report.terminal import print_run
from diffmia.results import load_run


@pytest.mark.slow
def test_report_writes_html_by_default_and_markdown_on_request(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run_dir / 'report.html'}"
    assert not (run_dir / "report.md").exists()
    assert main(["report", str(run_dir), "--format", "md"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run_dir / 'report.md'}"
    assert (run_dir / "report.md").read_text().startswith("# Membership audit: legacy")
    assert not list(run_dir.glob(".report.*"))  # written atomically: no temporary file left behind


@pytest.mark.slow
def test_report_renders_the_same_page_again(run_dir):
    assert main(["report", str(run_dir)]) == 0
    first = (run_dir / "report.html").read_text()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").read_text() == first


def test_report_of_a_folder_without_results_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no result.json and scores.parquet: it is not a finished diffmia run directory" in (
        capsys.readouterr().err
    )


def test_report_of_scores_missing_a_column_is_an_error(run_dir, capsys):
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(run_dir / "scores.parquet").drop(["score"]), run_dir / "scores.parquet")
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "scores.parquet has no column score" in err
    assert not (run_dir / "report.html").exists()


def test_report_refuses_an_unknown_format(run_dir, capsys):
    assert main(["report", str(run_dir), "--format", "pdf"]) == 2
    assert "'pdf' is not one of 'html', 'md'" in capsys.readouterr().err.replace("\n", " ").replace("│", "")


def test_the_terminal_summary_leads_with_the_verdict(run_dir, capsys):
    run = load_run(run_dir)
    print_run(run, table=True)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Verdict: Of 2 scenarios, 2 leak (I, III); headline controls at chance in every scenario."
    assert lines[1].startswith(
        "  [LEAK] Scenario I (image + caption, half of D\u2032 real members): members are identified"
    )
    assert "(AUC 0.980 [0.947, 1.000]); controls at chance." in " ".join(out.split())
    assert out.index("[LEAK] Scenario III") < out.index("Audit legacy: attacks fitted on shadow models")
    assert "0.980 [0.947, 1.000]" in out.split("Audit legacy")[1]  # the table is still there
    assert "Warning" not in out


def test_the_terminal_summary_ends_with_the_warnings(run_dir, edit_result, capsys):
    edit_result(run_dir, lambda r: r.update(warnings=["the blind control separates members"]))
    print_run(load_run(run_dir), table=True)
    out = capsys.readouterr().out
    assert out.rstrip().endswith("Warning: the blind control separates members")
