"""Benchmark: the multi-start law fits against their time targets and against the exhaustive loop.

    python bench/fit.py [--data moe_jax/scaling/data/chinchilla_epoch2024.csv] [--subset 100] [--exhaustive] [--json]

Case 1, `epoch`: the Chinchilla fit on Epoch AI's 240 points from the 4,500-start grid (target ≤ 20 s).
Case 2, `paper`: the joint fit from the paper's 3^9 = 19,683-start grid on 270 synthetic runs drawn from
the paper's law over the paper's grid with 1 % noise (target ≤ 120 s).
Each prints the measured seconds, the ratio to its target (< 1 meets it), and the gap to the exhaustive
reference (scipy L-BFGS-B from every start, then the same finishing and selection): by default the
reference runs on a random subset of --subset starts (its time scaled to the full grid is printed as an
estimate); --exhaustive runs it on every start (minutes for epoch, hours for paper). The screened fit
should reach an objective at least as good (gap ≤ 0) as the reference. All times are from this one
run; the machine is shared, so absolute seconds are noisy.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Epoch AI CSV (n_act, tokens, loss, outlier)")
    parser.add_argument("--subset", type=int, default=100, help="starts of the exhaustive reference (default 100)")
    parser.add_argument("--exhaustive", action="store_true", help="reference on every start (slow)")
    parser.add_argument("--cases", default="epoch,paper", help="comma list of epoch, paper")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
