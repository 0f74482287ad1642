"""The run report: one self-contained HTML page rendered from a run directory's result.json and scores.parquet."""

from diffmia.report.html import render_report

__all__ = ["render_report"]
