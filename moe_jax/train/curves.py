"""Training curves of several runs on one PNG: smoothed training cross-entropy and held-out loss vs tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from moe_jax.scaling.plots import save_figure
from moe_jax.train.metrics import read_metrics


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average [N] -> [N] (the first points average what exists so far)."""
    window = max(1, min(int(window), len(values)))
    csum = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def plot_run_curves(runs: list[tuple[str, int, str | Path]], path, title: str = "") -> Path:
    """One line per (name, seed, workdir): training CE (moving average over ~4 % of the logged steps) and
    held-out loss (markers) against tokens seen; a colour per name, a line style per seed."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    colours = dict(zip(sorted({name for name, _, _ in runs}), ("tab:blue", "tab:orange", "tab:green", "tab:red",
                                                                "tab:purple")))
    styles = ("-", "--", ":", "-.")
    finals = []  # last held-out loss of each run
    for name, seed, workdir in runs:
        rows = read_metrics(workdir)
        train = [r for r in rows if r.get("kind") == "train" and "ce" in r]
        evals = [r for r in rows if r.get("kind") == "eval" and "eval_loss" in r]
        colour, label = colours.get(name, "tab:gray"), f"{name} s{seed}"
        if train:
            tokens = np.array([r["tokens"] for r in train], np.float64)
            ce = np.array([r["ce"] for r in train], np.float64)
            ax.plot(tokens, smooth(ce, len(ce) // 25), styles[seed % len(styles)], color=colour, lw=1.2, alpha=0.8,
                    label=f"{label} train")
        if evals:
            ax.plot([r["tokens"] for r in evals], [r["eval_loss"] for r in evals], "o", color=colour, ms=5,
                    mec="black", mew=0.5, label=f"{label} held-out")
            finals.append(evals[-1]["eval_loss"])
    ax.set_xlabel("tokens seen")
    ax.set_xlim(left=0)
    ax.set_ylabel("loss (nats/token)")
    if finals:  # zoom on where the runs separate: from just under the best held-out loss upwards
        ax.set_ylim(min(finals) - 0.05, min(finals) + 0.9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
