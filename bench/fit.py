"""Benchmark: the multi-start law fits against their time targets and against the exhaustive loop.

    python bench/fit.py [--data moe_jax/scaling/data/chinchilla_epoch2024.csv] [--subset 100] [--exhaustive]
                        [--library-starts 500] [--json]

Case 1, `epoch`: the Chinchilla fit on Epoch AI's 240 points from the 4,500-start grid (target ≤ 20 s).
Case 2, `paper`: the joint fit from the paper's 3^9 = 19,683-start grid on 270 synthetic runs drawn from
the paper's law over the paper's grid with 1 % noise (target ≤ 120 s).
Each prints the measured seconds, the ratio to its target (< 1 meets it), and the gap to the exhaustive
reference (scipy L-BFGS-B from every start, then the same finishing and selection): by default the
reference runs on a random subset of --subset starts (its time scaled to the full grid is printed as an
estimate); --exhaustive runs it on every start (minutes for epoch, hours for paper). The screened fit
should reach an objective at least as good (gap ≤ 0) as the reference.
Library check of the hand-written optimiser: the same staged screen (fit_search.SCREEN_SCHEDULE) and the
same polish of the 20 best distinct candidates, once with fit_search.batched_lbfgs (all starts as one
[S, P] array) and once with scipy's L-BFGS-B run start by start for the same iteration budget, on the
same --library-starts starts; prints both times, their ratio (> 1: the batched one is faster) and both
best objectives. All times are from this one run; the machine is shared, so absolute seconds are noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "moe_jax" / "scaling" / "data" / "chinchilla_epoch2024.csv"  # packaged copy
TARGETS = {"epoch": 20.0, "paper": 120.0}


def case(name, runs, settings, subset, exhaustive, seed, log):
    from moe_jax.scaling.fit import FitSettings, fit
    from moe_jax.scaling.fit_grids import start_grid

    t = time.perf_counter()
    screened = fit(runs, settings)
    seconds = time.perf_counter() - t
    grid = start_grid(settings.grid, settings.kind)
    if exhaustive:
        starts = grid
    else:
        starts = grid[np.random.default_rng(seed).choice(len(grid), min(subset, len(grid)), replace=False)]
    log(f"{name}: screened fit {seconds:.1f} s; exhaustive reference on {len(starts)} starts ...")
    ref_settings = FitSettings(**{**settings.__dict__, "exhaustive": True})
    t = time.perf_counter()
    ref = fit(runs, ref_settings, starts=starts)
    ref_seconds = time.perf_counter() - t
    return {
        "case": name,
        "n_points": len(runs),
        "n_starts": len(grid),
        "seconds": seconds,
        "target_s": TARGETS[name],
        "ratio_to_target": seconds / TARGETS[name],
        "objective": screened.objective,
        "selection_score": screened.selection_score,
        "reference_starts": len(starts),
        "reference_seconds": ref_seconds,
        "reference_full_grid_estimate_s": ref_seconds * len(grid) / len(starts),
        "reference_objective": ref.objective,
        "reference_selection_score": ref.selection_score,
        "objective_gap": screened.objective - ref.objective,
        "score_gap": screened.selection_score - ref.selection_score,
        "speedup_vs_loop_estimate": ref_seconds * len(grid) / len(starts) / seconds,
        "coefficients": screened.coefficients,
    }


def scipy_lbfgs(fun, x0, iters: int):
    """The library alternative to fit_search.batched_lbfgs, same contract: scipy L-BFGS-B per start."""
    from scipy.optimize import minimize

    xs, fs = np.array(x0, np.float64), np.full(len(x0), np.inf)
    for i, start in enumerate(xs):

        def one(theta):
            f, g = fun(theta[None, :])
            return (float(f[0]), g[0]) if np.isfinite(f[0]) else (1e30, np.zeros_like(theta))

        if not np.isfinite(fun(start[None, :])[0][0]):
            continue  # the batched optimiser drops non-finite starts too
        res = minimize(one, start, jac=True, method="L-BFGS-B",
                       options={"maxiter": iters, "ftol": 1e-13, "gtol": 1e-10})
        xs[i], fs[i] = res.x, one(res.x)[0]
    return xs, fs


def library_comparison(name, runs, settings, n_starts, seed, log):
    """Screen + polish with the hand-written batched L-BFGS and with scipy per start, same starts."""
    from moe_jax.scaling.fit import build_objective
    from moe_jax.scaling.fit_data import lowest_loss_mask
    from moe_jax.scaling.fit_grids import start_grid
    from moe_jax.scaling.fit_search import batched_lbfgs, distinct, polish, screen

    s = settings.resolved()
    obj = build_objective(runs.subset(~lowest_loss_mask(runs.loss, s.heldout_lowest)), s)
    grid = start_grid(s.grid, s.kind)
    starts = grid[np.random.default_rng(seed).choice(len(grid), min(n_starts, len(grid)), replace=False)]
    out = {"starts": len(starts)}
    for label, minimise in (("batched", batched_lbfgs), ("scipy", scipy_lbfgs)):
        log(f"{name}: library check, screen with {label} L-BFGS on {len(starts)} starts ...")
        t = time.perf_counter()
        x, f = screen(obj.value_and_grad, starts, minimise=minimise)
        out[f"{label}_screen_s"] = time.perf_counter() - t
        out[f"{label}_objective"] = float(np.min(polish(obj.scalar, x[distinct(x, s.top_k)]).f))
    out["screen_speedup"] = out["scipy_screen_s"] / out["batched_screen_s"]
    out["objective_gap"] = out["batched_objective"] - out["scipy_objective"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Epoch AI CSV (n_act, tokens, loss, outlier)")
    parser.add_argument("--subset", type=int, default=100, help="starts of the exhaustive reference (default 100)")
    parser.add_argument("--exhaustive", action="store_true", help="reference on every start (slow)")
    parser.add_argument("--cases", default="epoch,paper", help="comma list of epoch, paper")
    parser.add_argument("--library-starts", type=int, default=500,
                        help="starts of the batched-vs-scipy screen comparison (default 500; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from moe_jax.errors import UserError
    from moe_jax.scaling.fit import FitSettings
    from moe_jax.scaling.fit_data import load_runs, synthetic_runs
    from moe_jax.scaling.law import load_law

    def log(msg):
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    results = []
    try:
        for name in args.cases.split(","):
            if name == "epoch":
                runs = load_runs(args.data, "chinchilla")
                settings = FitSettings("chinchilla", grid="epoch")
            elif name == "paper":
                runs = synthetic_runs(load_law("paper2025"), noise=0.01, n_points=270, seed=args.seed)
                settings = FitSettings("joint", grid="paper")
            else:
                raise UserError(f"unknown case {name!r}: use epoch, paper")
            results.append(case(name, runs, settings, args.subset, args.exhaustive, args.seed, log))
            if args.library_starts > 0:
                results[-1]["library"] = library_comparison(name, runs, settings, args.library_starts, args.seed, log)
    except UserError as err:
        print(f"bench/fit.py: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(
            f"{r['case']:>5}: {r['n_starts']} starts × {r['n_points']} points: {r['seconds']:.1f} s "
            f"(target {r['target_s']:.0f} s, ratio {r['ratio_to_target']:.2f}); objective {r['objective']:.6g}"
        )
        print(
            f"       exhaustive reference on {r['reference_starts']} starts: {r['reference_seconds']:.1f} s "
            f"(≈ {r['reference_full_grid_estimate_s']:.0f} s for the full grid, {r['speedup_vs_loop_estimate']:.0f}× "
            f"the screened fit); objective {r['reference_objective']:.6g}, gap {r['objective_gap']:+.3g} "
            f"({r['objective_gap'] / r['reference_objective']:+.2e} relative); selection score "
            f"{r['selection_score']:.5g} vs {r['reference_selection_score']:.5g} (gap {r['score_gap']:+.3g})"
        )
        if "library" in r:
            lib = r["library"]
            print(
                f"       screen on {lib['starts']} starts: batched L-BFGS {lib['batched_screen_s']:.1f} s, scipy "
                f"L-BFGS-B per start {lib['scipy_screen_s']:.1f} s (ratio {lib['screen_speedup']:.1f}); best polished "
                f"objective {lib['batched_objective']:.6g} vs {lib['scipy_objective']:.6g} "
                f"(gap {lib['objective_gap']:+.3g})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
