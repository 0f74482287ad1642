"""Figures of the report: ROC and log-log ROC curves, member vs non-member score histograms (matplotlib, Agg).

Each figure comes back as PNG bytes, so the report can embed it and stay one self-contained file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from diffmia.metrics import roc_curve
from diffmia.records import BoolArray, FloatArray


def _png(figure: object) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[arg-type]
    return buffer.getvalue()


def roc_figure(curves: Mapping[str, tuple[FloatArray, BoolArray]], title: str) -> bytes:
    """ROC (linear axes) beside log-log ROC, one line per named (scores, labels) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (linear, loglog) = plt.subplots(1, 2, figsize=(9, 4))
    floor = 1.0
    for name, (scores, labels) in curves.items():
        curve = roc_curve(scores, labels)
        fpr, tpr = curve.fpr, curve.tpr
        style = "--" if "control" in name else "-"  # controls dashed: they share colours with the attacks
        linear.plot(fpr, tpr, label=name, drawstyle="steps-post", linestyle=style)
        n_neg = int(np.count_nonzero(~labels))
        floor = min(floor, 1.0 / max(n_neg, 1))
        loglog.plot(
            np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2), label=name, drawstyle="steps-post", linestyle=style
        )
    linear.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for axis in (linear, loglog):
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
    loglog.plot([floor / 2, 1], [floor / 2, 1], color="grey", linestyle=":", linewidth=1)
    loglog.set_xscale("log")
    loglog.set_yscale("log")
    loglog.set_xlim(floor / 2, 1)
    loglog.set_ylim(floor / 2, 1.05)
    linear.set_title(f"{title}: ROC")
    loglog.set_title("log-log ROC (FPR below 1/n drawn at the floor)")
    linear.legend(fontsize=7, loc="lower right")
    return _png(figure)


def loglog_roc_figure(
    curves: Mapping[str, tuple[FloatArray, BoolArray]], title: str, mark_fpr: float | None = None
) -> bytes:
    """A small log-log ROC of a headline score set and its controls (the first curve solid, the others dashed).

    FPRs below 1 / number of non-members cannot be resolved: they are drawn at half that floor. ``mark_fpr`` (the
    first FPR the report quotes a TPR at) is marked with a vertical line where it is resolvable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(3.6, 3.0))
    floor = 1.0
    for _, (_, labels) in curves.items():
        floor = min(floor, 1.0 / max(int(np.count_nonzero(~labels)), 1), 1.0 / max(int(np.count_nonzero(labels)), 1))
    colours = ("#b71c1c", "#555555", "#1e88e5", "#8e24aa")  # not the red of the LEAK tag (#c62828)
    for k, (name, (scores, labels)) in enumerate(curves.items()):
        curve = roc_curve(scores, labels)
        axis.plot(
            np.maximum(curve.fpr, floor / 2),
            np.maximum(curve.tpr, floor / 2),
            label=name,
            drawstyle="steps-post",
            linestyle="-" if k == 0 else "--",
            linewidth=2 if k == 0 else 1.2,
            color=colours[k % len(colours)],
        )
    axis.plot([floor / 2, 1], [floor / 2, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    if mark_fpr is not None and mark_fpr >= floor:
        axis.axvline(mark_fpr, color="grey", linewidth=0.8, alpha=0.6)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(floor / 2, 1)
    axis.set_ylim(floor / 2, 1.1)
    axis.set_xlabel("false positive rate", fontsize=8)
    axis.set_ylabel("true positive rate", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=6.5, loc="lower right")
    return _png(figure)


def histogram_figure(scores: FloatArray, labels: BoolArray, title: str) -> bytes:
    """Score histograms of members and non-members on shared bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 3))
    finite = scores[np.isfinite(scores)]
    bins = list(np.histogram_bin_edges(finite, bins=20)) if finite.size else 10
    axis.hist(scores[~labels], bins=bins, alpha=0.6, label=f"non-members ({int(np.sum(~labels))})")
    axis.hist(scores[labels], bins=bins, alpha=0.6, label=f"members ({int(np.sum(labels))})")
    axis.set_xlabel("score (higher = more likely a member)")
    axis.set_ylabel("images")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    return _png(figure)


def levels_figure(
    factor: str, levels: Sequence[str], series: Mapping[str, Sequence[tuple[float, float, float] | None]]
) -> bytes:
    """AUC with its interval at each level of a study factor, one line per named series of (auc, low, high)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for k, (name, points) in enumerate(series.items()):
        shift = 0.06 * (k - (len(series) - 1) / 2)  # side by side, so intervals do not hide each other
        kept = [(x + shift, p) for x, p in enumerate(points) if p is not None]
        aucs = np.array([p[0] for _, p in kept])
        below = aucs - np.array([p[1] for _, p in kept])
        above = np.array([p[2] for _, p in kept]) - aucs
        axis.errorbar([x for x, _ in kept], aucs, yerr=[below, above], marker="o", capsize=3, label=name)
    axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axis.set_xticks(range(len(levels)), list(levels))
    axis.set_xlabel(factor)
    axis.set_ylabel("AUC (95% interval)")
    axis.set_ylim(0.3, 1.02)
    axis.set_title(f"Membership leakage against {factor}", fontsize=10)
    axis.legend(fontsize=7)
    return _png(figure)
