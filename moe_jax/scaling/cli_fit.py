"""`moe-jax fit RUNS.csv --law chinchilla|joint ...`: fit a law to runs, print/write the result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moe_jax.errors import UserError, warn
from moe_jax.paths import user_path
from moe_jax.scaling.fit import WEIGHT_MODES, FitSettings, fit, write_result
from moe_jax.scaling.fit_data import LAW_KINDS, load_runs
from moe_jax.scaling.fit_grids import GRID_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", help="CSV with columns n_act, tokens, loss (+ experts for --law joint); outlier=1 drops a row")
    parser.add_argument("--law", required=True, choices=LAW_KINDS, help="which law to fit")
    parser.add_argument("--grid", choices=GRID_NAMES, help="multi-start grid (default: epoch for chinchilla, paper for joint)")
    parser.add_argument("--heldout-lowest", type=int, metavar="K", help="hold out the K lowest-loss runs (default 0 / 10 for joint)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap resamples for 95%% intervals (default 0)")
    parser.add_argument("--huber-delta", type=float, metavar="X", help="Huber delta on log-loss (default 1e-3 / 0.01 for joint)")
    parser.add_argument("--weights", choices=WEIGHT_MODES, help="per-run weights: paper = (log L)^-30 (default for joint), none")
    parser.add_argument("--l2", type=float, metavar="X", help="L2 penalty on the parameters (default 0 / 1e-5 for joint)")
    parser.add_argument("--out", metavar="DIR", help="write fit.json and the loss-vs-FLOPs, residual and N*/D* plots here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from moe_jax.cli import reject_extra

    reject_extra(extra)
    runs = load_runs(args.runs, args.law)
    settings = FitSettings(
        kind=args.law, grid=args.grid, heldout_lowest=args.heldout_lowest, huber_delta=args.huber_delta,
        weights=args.weights, l2=args.l2, bootstrap=args.bootstrap, seed=args.seed,
    )
    out_dir = _prepare_out(args.out) if args.out else None
    progress = None if args.quiet else (lambda msg: print(f"[fit] {msg}", file=sys.stderr, flush=True))
    result = fit(runs, settings, progress=progress)
    for line in result.warnings:
        warn("fit", line)
    if out_dir is not None:
        write_result(result, out_dir / "fit.json")
        _plots(result, runs, out_dir, progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_result(result, len(runs)))
        if out_dir is not None:
            per_e = ", fit_per_expert.png" if result.kind == "joint" else ""
            print(f"wrote {out_dir / 'fit.json'} (use with --coeffs), loss_vs_flops.png, residuals.png, "
                  f"compute_optimal.png{per_e}")
    return 0


def _prepare_out(out: str) -> Path:
    """The --out directory, local or gs:// (never pathlib for gs://: that would be a local 'gs:/' folder)."""
    path = user_path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --out directory {out}: {err.strerror}") from None
    return path


def _plots(result, runs, out_dir: Path, progress) -> None:
    from moe_jax.scaling import plots

    frame = runs.frame()
    experts = sorted({int(e) for e in frame["experts"]}) if result.kind == "joint" else [1]
    if progress:
        progress("writing plots")
    plots.plot_loss_vs_flops(result.law, out_dir / "loss_vs_flops.png", runs=frame, experts=experts,
                             heldout_mask=result.heldout_mask)
    plots.plot_residuals(result.law, frame, out_dir / "residuals.png", heldout_mask=result.heldout_mask)
    plots.plot_compute_optimal(result.law, out_dir / "compute_optimal.png", experts, runs=frame)
    if result.kind == "joint":
        plots.plot_fit_per_expert(result.law, frame, out_dir / "fit_per_expert.png", heldout_mask=result.heldout_mask)


def format_result(result, n_runs: int) -> str:
    """A human-readable coefficient table (with bootstrap intervals when present)."""
    d = result.to_dict()
    iv = (d.get("intervals") or {}).get("coefficients", {})
    lines = [f"{result.kind} law fitted to {d['n_train']} runs ({d['n_heldout']} held out of {n_runs}), "
             f"{result.n_starts} starts, {result.seconds:.1f} s"]
    head = f"  {'coefficient':<12}{'value':>14}" + (f"{'2.5%':>14}{'97.5%':>14}" if iv else "")
    lines.append(head)
    for k, v in d["coefficients"].items():
        row = f"  {k:<12}{v:>14.6g}"
        if k in iv:
            row += f"{iv[k][0]:>14.6g}{iv[k][1]:>14.6g}"
        lines.append(row)
    lines.append(f"  objective {d['objective']:.6g}   RMSE(log L) train {d['rmse_train']:.4f}"
                 + (f"   held-out {d['rmse_heldout']:.4f}" if d["rmse_heldout"] is not None else ""))
    div = (d.get("intervals") or {}).get("derived", {})
    for k, v in d["derived"].items():
        lines.append(f"  {k:<22}{v:>12.4g}" + (f"  [{div[k][0]:.4g}, {div[k][1]:.4g}]" if k in div else ""))
    return "\n".join(lines)
