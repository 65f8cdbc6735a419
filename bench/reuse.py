"""Benchmark: what checkpoint reuse saves on a sweep grid, measured against the analytic ratio.

    python bench/reuse.py [--grid smoke|cpu|bench/reuse_cpu_small.py|PATH] [--dir DIR] [--parallel 1] [--json]

Plans the grid in DIR (unless DIR already holds a sweep), runs or continues it (`moe-jax sweep run`;
an already finished sweep is only read), then prints the reuse report's ratios, each from this one sweep:
  token ratio   measured (tokens the runs trained themselves) / analytic ((1-f)·T_max + f·ΣT)/ΣT — 1.000 expected
  wall ratio    the sweep's wall time / independent runs priced from each trunk (fixed start-up + s/token),
                and that over the token ratio (the issue's target: within 10 %)
  step ratio    the same for the time in training steps alone (from metrics.jsonl)
  loss gap      branch − control held-out loss for each control (the method assumes it is small)
Use --parallel 1 for timings: parallel runs share the cores. The machine is shared, so seconds are noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "moe_jax.cli", *map(str, args)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="smoke", help="built-in grid name or .py path (default smoke)")
    parser.add_argument("--dir", help="sweep directory (default runs/bench_reuse_<grid>)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1: clean timings)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sweep = Path(args.dir or f"runs/bench_reuse_{Path(args.grid).stem}")
    if not (sweep / "sweep.sqlite").exists():
        _cli("sweep", "plan", "--grid", args.grid, "--dir", sweep)
    _cli("sweep", "run", "--dir", sweep, "--parallel", args.parallel)

    from moe_jax.sweep.registry import Registry
    from moe_jax.sweep.reuse import reuse_report

    r = reuse_report(Registry.open(sweep))
    result = {
        "grid": args.grid, "analytic_token_ratio": r["analytic_token_ratio"],
        "measured_token_ratio": r["measured_token_ratio"],
        "token_ratio_measured_over_analytic": r["measured_token_ratio"] / r["analytic_token_ratio"],
        "wall_ratio": r["measured_wall_ratio"], "wall_over_token_ratio": r["measured_wall_ratio"] / r["analytic_token_ratio"],
        "step_ratio": r["measured_step_ratio"], "step_over_token_ratio": r["measured_step_ratio"] / r["analytic_token_ratio"],
        "loss_gaps": [{"shape": p["shape"], "experts": p["experts"], "tokens": p["tokens"], "gap": p["gap"]}
                      for p in r["pairs"]],
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"reuse on grid {args.grid} ({sweep}):")
    print(f"  token ratio  analytic {result['analytic_token_ratio']:.4f}  measured {result['measured_token_ratio']:.4f}  "
          f"measured/analytic {result['token_ratio_measured_over_analytic']:.4f}")
    print(f"  wall ratio   {result['wall_ratio']:.4f}  = {result['wall_over_token_ratio']:.3f} × the token ratio")
    print(f"  step ratio   {result['step_ratio']:.4f}  = {result['step_over_token_ratio']:.3f} × the token ratio")
    for g in result["loss_gaps"]:
        print(f"  loss gap     {g['shape']} E={g['experts']} T={g['tokens']:,}: branch − control = {g['gap']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
