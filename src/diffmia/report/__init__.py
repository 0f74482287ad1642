"""The run report, rendered from a run directory's saved results (:func:`diffmia.results.load_run`): one
self-contained HTML page, or Markdown; both lead with the verdict of :mod:`diffmia.report.verdict`."""

from diffmia.report.html import render_report
from diffmia.report.markdown import render_markdown

__all__ = ["render_markdown", "render_report"]
