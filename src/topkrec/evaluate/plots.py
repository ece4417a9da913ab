"""PNG plots for ``evaluate --plots`` and the demo report: training curves and weight histograms."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

CURVES = (
    ("train/policy_loss", "policy loss"),
    ("train/behavior_loss", "β̂ cross-entropy"),
    ("train/iw_mean", "mean importance weight"),
    ("train/iw_ess", "effective sample size / batch"),
    ("train/iw_capped_frac", "fraction of weights capped"),
    ("train/topk_multiplier_mean", "mean λ_K"),
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: list[dict[str, Any]], path: Path, title: str = "training") -> Path | None:
    """One panel per logged training metric against the step; None when there is no history."""
    if not history:
        return None
    plt = _pyplot()
    keys = [(k, label) for k, label in CURVES if any(k in r for r in history)]
    cols = 3
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys, strict=False):
        pts = [(r["step"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_weight_histograms(
    log_weights: dict[str, np.ndarray], path: Path, cap: float | None = None, title: str = "importance weights"
) -> Path | None:
    """Histogram of log10(π/β̂) on the test events for each model; the cap as a vertical line."""
    items = [(name, w[np.isfinite(w)]) for name, w in log_weights.items() if w is not None and np.isfinite(w).any()]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    lo = min(float(w.min()) for _, w in items) / math.log(10)
    hi = max(float(w.max()) for _, w in items) / math.log(10)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
    for name, w in items:
        ax.hist(w / math.log(10), bins=bins, histtype="step", lw=1.5, label=name)
    if cap is not None:
        ax.axvline(math.log10(cap), color="k", ls="--", lw=1, label=f"cap {cap:.3g}")
    ax.set_xlabel("log10 w = log10 π(a|s)/β̂(a|s) on test events")
    ax.set_ylabel("events")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
