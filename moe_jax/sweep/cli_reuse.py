"""`moe-jax reuse-report --dir D`: tokens and wall time saved by checkpoint reuse, branch-vs-control loss gaps."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, help="a finished sweep directory (`moe-jax sweep run`)")
    parser.add_argument("--plot", metavar="PNG", help="branch and control loss curves (default DIR/reuse_curves.png)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from moe_jax.cli import reject_extra
    from moe_jax.sweep.registry import Registry
    from moe_jax.sweep.reuse import format_report, plot_pairs, reuse_report

    reject_extra(extra)
    registry = Registry.open(args.dir)
    report = reuse_report(registry)
    plot = None
    if report["pairs"]:
        plot = plot_pairs(report, args.plot or registry.dir / "reuse_curves.png")
    if args.json:
        pairs = [{k: v for k, v in p.items() if k not in ("branch", "control")} for p in report["pairs"]]
        print(json.dumps({**report, "pairs": pairs, "plot": str(plot) if plot else None}, indent=1))
    else:
        print(format_report(report))
        if plot:
            print(f"wrote {plot}")
    return 0
