"""PNG plots of a law (matplotlib Agg, no pyplot state): loss vs FLOPs per E with data, fit residuals,
compute-optimal N*(F) and D*(F) per E, and the memory-optimal E over a (FLOPs × memory) grid.

`runs` is a pandas DataFrame with columns n_act, tokens, loss and optionally experts (missing → E = 1);
`heldout_mask` is a boolean array over its rows marking held-out runs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from moe_jax.errors import UserError
from moe_jax.paths import user_path
from moe_jax.scaling import constants, optimal
from moe_jax.scaling.counting import format_count
from moe_jax.scaling.shape_rule import PAPER_RULE, ShapeRule

_RUN_COLUMNS = ("n_act", "tokens", "loss")


def _colours(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


def _run_arrays(runs, heldout_mask):
    """n_act, tokens, loss, experts [R] and the held-out mask [R] from a runs DataFrame."""
    missing = [c for c in _RUN_COLUMNS if c not in runs.columns]
    if missing:
        raise UserError(f"runs table is missing column(s) {', '.join(missing)}; needs n_act, tokens, loss[, experts]")
    n = runs["n_act"].to_numpy(np.float64)
    d = runs["tokens"].to_numpy(np.float64)
    loss = runs["loss"].to_numpy(np.float64)
    e = runs["experts"].to_numpy(np.float64) if "experts" in runs.columns else np.ones_like(n)
    mask = np.zeros(len(n), bool) if heldout_mask is None else np.asarray(heldout_mask, bool)
    if mask.shape != n.shape:
        raise UserError(f"heldout_mask has {mask.size} entries for {n.size} runs")
    return n, d, loss, e, mask


def save_figure(fig: Figure, path) -> Path:
    """Write a figure as PNG (parents created) to a local or gs:// path; an unwritable path is a UserError."""
    path = user_path(path)  # local or gs://: rendered to bytes, written through the path object
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix[1:].lower() or None, dpi=120, bbox_inches="tight")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.getvalue())
    except OSError as err:
        raise UserError(f"cannot write plot {path}: {err.strerror}") from None
    return path


def plot_loss_vs_flops(
    law,
    path,
    runs=None,
    experts=constants.PAPER_EXPERTS,
    heldout_mask=None,
    flops_range=None,
    mark_flops=None,
) -> Path:
    """Compute-optimal loss L*(F) per E (the law's frontier) with optional runs as points at F = 6·N·D."""
    if law.kind == "chinchilla":
        experts = (1,)
    experts = optimal.check_experts(law, experts)
    if runs is not None:
        n, d, loss, e, mask = _run_arrays(runs, heldout_mask)
        flops = 6.0 * n * d
        if flops_range is None and len(flops):
            flops_range = (flops.min() / 2.0, flops.max() * 10.0)
    lo, hi = flops_range or (1e18, 1e25)
    grid = np.geomspace(lo, hi, 200)  # [G]
    colours = dict(zip(experts, _colours(len(experts))))
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    for k in experts:
        *_, l_star = optimal.compute_optimal_closed_form(law, grid, k)
        ax.plot(grid, l_star, color=colours[k], lw=1.8, label=f"E={k} compute-optimal")
    if runs is not None:
        for k in sorted(set(e.tolist())):
            sel = e == k
            colour = colours.get(int(k), "grey")
            ax.scatter(flops[sel & ~mask], loss[sel & ~mask], s=14, color=colour, alpha=0.8,
                       label=None if int(k) in colours else f"E={k:g} runs")
            if (sel & mask).any():
                ax.scatter(flops[sel & mask], loss[sel & mask], s=40, facecolors="none", edgecolors=colour,
                           linewidths=1.4)
        if mask.any():
            ax.scatter([], [], s=40, facecolors="none", edgecolors="black", label="held out")
    if mark_flops is not None:
        ax.axvline(mark_flops, color="grey", ls=":", lw=1.0, label=f"budget {mark_flops:.2g}")
    ax.set_xscale("log")  # loss on a linear axis: log-spaced ticks of a 2-3 nats range are unreadable
    ax.set_xlabel("training FLOPs (6·N_act·D)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{law.kind} law: loss vs compute, compute-optimal frontier per E")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_compute_optimal(law, path, experts=constants.PAPER_EXPERTS, flops_range=None, runs=None,
                         mark_flops=None) -> Path:
    """Two log-log panels: compute-optimal N*(F) and D*(F) per E (closed form), with optional runs as points.

    `runs`: a DataFrame with n_act, tokens and optionally experts (missing → E = 1) and flops (missing → 6·N·D).
    """
    if law.kind == "chinchilla":
        experts = (1,)
    experts = optimal.check_experts(law, experts)
    points = None
    if runs is not None:
        missing = [c for c in ("n_act", "tokens") if c not in runs.columns]
        if missing:
            raise UserError(f"runs table is missing column(s) {', '.join(missing)}; "
                            f"needs n_act, tokens[, experts, flops]")
        n, d = runs["n_act"].to_numpy(np.float64), runs["tokens"].to_numpy(np.float64)
        e = runs["experts"].to_numpy(np.float64) if "experts" in runs.columns else np.ones_like(n)
        f = runs["flops"].to_numpy(np.float64) if "flops" in runs.columns else 6.0 * n * d
        points = (n, d, e, f)
        if flops_range is None and len(f):
            flops_range = (f.min() / 2.0, f.max() * 10.0)
    grid = np.geomspace(*(flops_range or (1e18, 1e25)), 200)  # [G]
    colours = dict(zip(experts, _colours(len(experts))))
    fig = Figure(figsize=(11.0, 4.5))
    axes = fig.subplots(1, 2)
    for k in experts:
        n_star, d_star, _ = optimal.compute_optimal_closed_form(law, grid, k)  # [G] each
        for ax, values in zip(axes, (n_star, d_star)):
            ax.plot(grid, values, color=colours[k], lw=1.8, label=f"E={k}")
    if points is not None:
        n, d, e, f = points
        for k in sorted(set(e.tolist())):
            sel = e == k
            for ax, values in zip(axes, (n, d)):
                ax.scatter(f[sel], values[sel], s=14, color=colours.get(int(k), "grey"), alpha=0.8,
                           label=None if int(k) in colours else f"E={k:g} runs")
    for ax, name in zip(axes, ("N* (active parameters)", "D* (training tokens)")):
        if mark_flops is not None:
            ax.axvline(mark_flops, color="grey", ls=":", lw=1.0, label=f"budget {mark_flops:.2g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs (6·N_act·D)")
        ax.set_ylabel(name)
        ax.set_title(f"compute-optimal {name.split()[0]} per E")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_fit_per_expert(law, runs, path, heldout_mask=None) -> Path:
    """One panel per expert count: each model size's fitted curve L(N, D) against training FLOPs 6·N·D,
    its runs as points (held-out hollow), and the law's compute-optimal frontier L*(F) dashed."""
    n, d, loss, e, mask = _run_arrays(runs, heldout_mask)
    experts = sorted({int(k) for k in e})
    sizes = sorted(set(n.tolist()))
    colours = dict(zip(sizes, _colours(len(sizes))))
    cols = min(len(experts), 2)
    rows = -(-len(experts) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows))
    flops = 6.0 * n * d
    span = np.geomspace(flops.min() / 2.0, flops.max() * 2.0, 100)  # [G]
    for i, k in enumerate(experts):
        ax = fig.add_subplot(rows, cols, i + 1)
        for size in sizes:
            sel = (e == k) & (n == size)
            if not sel.any():
                continue
            tokens = np.geomspace(d[sel].min() / 1.5, d[sel].max() * 1.5, 60)  # [60]
            ax.plot(6.0 * size * tokens, law.loss(size, tokens, k), color=colours[size], lw=1.4,
                    label=f"N_act {format_count(size)}")
            ax.scatter(flops[sel & ~mask], loss[sel & ~mask], s=16, color=colours[size], zorder=3)
            ax.scatter(flops[sel & mask], loss[sel & mask], s=40, facecolors="none", edgecolors=colours[size],
                       linewidths=1.4, zorder=3)
        *_, frontier = optimal.compute_optimal_closed_form(law, span, k)
        ax.plot(span, frontier, "k--", lw=1.0, label="compute-optimal L*(F)")
        ax.set_xscale("log")
        ax.set_title(f"E = {k}", fontsize=10)
        ax.set_xlabel("training FLOPs (6·N_act·D)")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("fitted joint law (lines) and runs (points; hollow = held out)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def log_residuals(law, runs):
    """log L̂ − log L per run [R] (experts column optional, E = 1 when missing)."""
    n, d, loss, e, _ = _run_arrays(runs, None)
    return np.log(law.loss(n, d, e)) - np.log(loss)


def plot_residuals(law, runs, path, heldout_mask=None, x: str = "flops") -> Path:
    """log L̂ − log L per run against FLOPs (x="flops") or the observed loss (x="loss"), coloured by E."""
    if x not in ("flops", "loss"):
        raise UserError(f"residual x-axis must be 'flops' or 'loss', got {x!r}")
    n, d, loss, e, mask = _run_arrays(runs, heldout_mask)
    resid = log_residuals(law, runs)  # [R]
    xs = 6.0 * n * d if x == "flops" else loss
    levels = sorted(set(e.tolist()))
    colours = dict(zip(levels, _colours(len(levels))))
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for k in levels:
        sel = e == k
        ax.scatter(xs[sel & ~mask], resid[sel & ~mask], s=14, color=colours[k], label=f"E={k:g}")
        if (sel & mask).any():
            ax.scatter(xs[sel & mask], resid[sel & mask], s=40, facecolors="none", edgecolors=colours[k],
                       linewidths=1.4)
    if mask.any():
        ax.scatter([], [], s=40, facecolors="none", edgecolors="black", label="held out")
    ax.axhline(0.0, color="black", lw=0.8)
    rmse_tr = float(np.sqrt(np.mean(resid[~mask] ** 2))) if (~mask).any() else float("nan")
    title = f"residuals log L̂ − log L: RMSE train {rmse_tr:.4f}"
    if mask.any():
        title += f", held-out {float(np.sqrt(np.mean(resid[mask] ** 2))):.4f}"
    ax.set_title(title)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (6·N_act·D)" if x == "flops" else "observed loss")
    ax.set_ylabel("log L̂ − log L")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


def plot_memory_optimal_map(
    law,
    path,
    experts=constants.PAPER_EXPERTS,
    flops_range=None,
    memory_range=None,
    resolution: int = 29,
    kv_tokens: float = 0.0,
    inference_tokens: float = 0.0,
    point=None,
    shape: ShapeRule = PAPER_RULE,
    fitted=None,
) -> Path:
    """Heatmap of the memory-optimal E over FLOPs (x) × memory in parameters (y) under a shape rule;
    point=(F, M) is marked. Axes: the given ranges, else `map_ranges` (around a FittedRange `fitted`, or
    the paper's scale 1e19..1e26 FLOPs × 1e9..1e12 parameters), widened to show the point."""
    experts = optimal.check_experts(law, experts)
    auto_flops, auto_memory = map_ranges(experts, shape, fitted, point, kv_tokens)
    flops = np.geomspace(*(flops_range or auto_flops), resolution)  # [F]
    memory = np.geomspace(*(memory_range or auto_memory), resolution)  # [M]
    best = optimal.memory_optimal_grid(law, flops, memory, experts, kv_tokens, inference_tokens,
                                       shape=shape)  # [M, F]
    levels = sorted(experts)
    index = np.full(best.shape, np.nan)
    for i, k in enumerate(levels):
        index[best == k] = i
    cmap = ListedColormap(_colours(len(levels)))
    norm = BoundaryNorm(np.arange(len(levels) + 1) - 0.5, cmap.N)
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(flops, memory, index, cmap=cmap, norm=norm, shading="nearest")
    for j, i in np.ndindex(best.shape):
        if best[j, i] and (j % 2 == 0 and i % 2 == 0):
            ax.text(flops[i], memory[j], str(best[j, i]), ha="center", va="center", fontsize=6, color="white")
    cbar = fig.colorbar(mesh, ax=ax, ticks=range(len(levels)))
    cbar.ax.set_yticklabels([str(k) for k in levels])
    cbar.set_label("memory-optimal number of experts E")
    if point is not None:
        ax.plot([point[0]], [point[1]], marker="*", ms=14, color="red", mec="white")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("memory for weights + KV (parameters; bytes = params × bytes/param)")
    extra = (f", KV {kv_tokens:.2g} tokens" if kv_tokens else "") + (
        f", {inference_tokens:.2g} inference tokens" if inference_tokens else "")
    rule = "" if shape.is_paper else f", {shape.describe()}"
    ax.set_title(f"memory-optimal E (paper procedure{rule}){extra}")
    return save_figure(fig, path)


def map_ranges(experts, shape: ShapeRule = PAPER_RULE, fitted=None, point=None, kv_tokens: float = 0.0):
    """Default (FLOPs, memory-in-parameters) axes of the memory-optimal map.

    With a fitted range: FLOPs 6·N_min·D_min/10 .. 6·N_max·D_max·100, memory from the smallest model of the
    rule to 100× the largest fitted shape's N_total at the largest E; else the paper's scale. A point
    (F, M) outside is brought inside with a factor 3 of margin.
    """
    flops, memory = (1e19, 1e26), (1e9, 1e12)
    if fitted is not None:
        (n_lo, n_hi), (t_lo, t_hi) = fitted.n_act, fitted.tokens
        flops = (6.0 * n_lo * t_lo / 10.0, 6.0 * n_hi * t_hi * 100.0)
        memory = (optimal.smallest_model_params(min(experts), kv_tokens, shape),
                  100.0 * float(shape.n_total(fitted.d_model[1], max(experts))))
    if point is not None:
        flops = (min(flops[0], point[0] / 3.0), max(flops[1], point[0] * 3.0))
        memory = (min(memory[0], point[1] / 3.0), max(memory[1], point[1] * 3.0))
    return flops, memory
