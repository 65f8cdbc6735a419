"""Plots: PNGs are written, decode, show content, and bad inputs are UserErrors."""

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from moe_jax.errors import UserError
from moe_jax.scaling import plots
from moe_jax.scaling.law import load_law

LAW = load_law("paper2025")


def synthetic_runs(n_runs=60, seed=0):
    """Runs generated from the paper's law with 1 % multiplicative noise (the fitter's test data shape)."""
    rng = np.random.default_rng(seed)
    n = np.geomspace(8e7, 2.7e9, n_runs)
    tokens = n * rng.uniform(5, 100, n_runs)
    experts = rng.choice([1, 2, 4, 8, 16, 32], n_runs)
    loss = LAW.loss(n, tokens, experts) * np.exp(rng.normal(0, 0.01, n_runs))
    return pd.DataFrame({"n_act": n, "tokens": tokens, "experts": experts, "loss": loss, "name": "x"})


def n_colours(path) -> int:
    img = matplotlib.image.imread(path)  # [H, W, 4] floats in [0, 1]
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    rgb = np.round(img[..., :3] * 255).astype(np.int64)  # [H, W, 3]
    return len(np.unique(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]))


def assert_png_with_content(path):
    # Not a blank canvas: many distinct colours are drawn.
    assert n_colours(path) > 50


def test_loss_vs_flops_with_runs_and_heldout(tmp_path):
    runs = synthetic_runs()
    mask = runs["loss"].to_numpy() <= np.sort(runs["loss"].to_numpy())[9]
    out = plots.plot_loss_vs_flops(LAW, tmp_path / "a" / "loss.png", runs=runs, heldout_mask=mask)
    assert out == tmp_path / "a" / "loss.png"
    assert_png_with_content(out)


def test_loss_vs_flops_law_only_and_chinchilla(tmp_path):
    assert_png_with_content(plots.plot_loss_vs_flops(LAW, tmp_path / "joint.png", experts=(1, 8)))
    runs = synthetic_runs().drop(columns=["experts"])  # no experts column → E = 1
    assert_png_with_content(plots.plot_loss_vs_flops(load_law("epoch2024"), tmp_path / "chin.png", runs=runs))


def test_log_residuals_are_the_noise():
    runs = synthetic_runs(n_runs=400, seed=1)
    clean = runs.assign(loss=LAW.loss(runs["n_act"], runs["tokens"], runs["experts"]))
    assert np.abs(plots.log_residuals(LAW, clean)).max() < 1e-12
    resid = plots.log_residuals(LAW, runs)
    assert np.sqrt(np.mean(resid**2)) == pytest.approx(0.01, rel=0.15)  # the 1 % noise level
    # Wrong law → residuals biased away from zero.
    assert abs(np.mean(plots.log_residuals(load_law("hoffmann2022"), runs.drop(columns=["experts"])))) > 0.02


def test_residuals_plot(tmp_path):
    runs = synthetic_runs()
    mask = np.zeros(len(runs), bool)
    mask[:10] = True
    for x in ("flops", "loss"):
        assert_png_with_content(plots.plot_residuals(LAW, runs, tmp_path / f"res_{x}.png", heldout_mask=mask, x=x))


def test_memory_optimal_map(tmp_path):
    out = plots.plot_memory_optimal_map(LAW, tmp_path / "map.png", resolution=9, point=(1e22, 40e9))
    # The map's colours change across the grid (several different E are optimal somewhere).
    assert n_colours(out) > 100


def test_bad_runs_are_user_errors(tmp_path):
    runs = synthetic_runs()
    with pytest.raises(UserError, match="missing column.*tokens"):
        plots.plot_residuals(LAW, runs.drop(columns=["tokens"]), tmp_path / "r.png")
    with pytest.raises(UserError, match="heldout_mask has 3 entries for 60 runs"):
        plots.plot_loss_vs_flops(LAW, tmp_path / "l.png", runs=runs, heldout_mask=[True, False, True])
    with pytest.raises(UserError, match="residual x-axis"):
        plots.plot_residuals(LAW, runs, tmp_path / "r.png", x="tokens")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write plot"):
        plots.plot_loss_vs_flops(LAW, blocker / "sub" / "x.png")
