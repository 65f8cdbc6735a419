"""`moe-jax sweep plan | run | status | collect`: scaling-law sweeps with checkpoint reuse.

    moe-jax sweep plan --grid smoke --dir sweeps/smoke      # expand the grid into runs, create the registry
                       [--runs-root DIR] [--config.SECTION.FIELD=VALUE …]  # shared overrides for every run
    moe-jax sweep run --dir sweeps/smoke [--parallel 2]     # train what is ready; re-run to continue
    moe-jax sweep run --dir D --backend gcloud --settings tpu.toml --slices 4 [--dry-run]   # on Cloud TPU
    moe-jax sweep run --dir D --backend xpk --settings tpu.toml --cluster C [--dry-run]     # on GKE via xpk
    moe-jax sweep status --dir sweeps/smoke [--rescan]      # progress, ETA, failures
    moe-jax sweep collect --dir sweeps/smoke --out runs.csv # the table `moe-jax fit` reads
"""

from __future__ import annotations

import argparse
import os

from moe_jax.cli import reject_extra
from moe_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plan = sub.add_parser("plan", help="expand a grid into runs and create DIR/sweep.sqlite")
    plan.add_argument("--grid", required=True, help="built-in grid (smoke, cpu, paper) or the path of a grid .py file")
    plan.add_argument("--dir", required=True, help="sweep directory: registry, logs, and runs/ (the workdirs)")
    plan.add_argument("--runs-root", help="where the run workdirs go (default DIR/runs); gs://BUCKET/PATH for TPU")
    plan.epilog = ("Add shared overrides for every run as --config.SECTION.FIELD=VALUE, "
                   "e.g. --config.data.fineweb_path=/data/fineweb for the paper grid.")
    run = sub.add_parser("run", help="train ready runs in dependency order; safe to kill and re-run")
    run.add_argument("--dir", required=True, help="sweep directory created by `sweep plan`")
    run.add_argument("--parallel", type=int, metavar="N",
                     help="runs trained at once (default: 1 locally, --slices for gcloud, all ready for xpk)")
    _add_cloud_arguments(run)
    status = sub.add_parser("status", help="runs and tokens done, ETA, failures")
    status.add_argument("--dir", required=True, help="sweep directory")
    status.add_argument("--rescan", action="store_true",
                        help="rebuild the registry from the run workdirs (summary.json) first")
    collect = sub.add_parser("collect", help="write the finished runs as a CSV for `moe-jax fit`")
    collect.add_argument("--dir", required=True, help="sweep directory")
    collect.add_argument("--out", required=True, help="CSV path (columns n_act, n_total, tokens, experts, loss, …)")
    collect.add_argument("--kinds", default="branch,control", help="run kinds to include (default branch,control)")


def _add_cloud_arguments(run: argparse.ArgumentParser) -> None:
    from moe_jax.tpu.cli import add_settings_arguments

    run.add_argument("--backend", choices=("local", "gcloud", "xpk"), default="local",
                     help="local processes (default), a pool of Cloud TPU slices, or xpk workloads on GKE")
    run.add_argument("--slices", type=int, default=1, metavar="N", help="gcloud: at most N slices at once")
    run.add_argument("--cluster", help="xpk: the existing GKE cluster (or cluster in the settings file)")
    run.add_argument("--prefix", help="names of the slices/workloads (default mj-SWEEPDIR)")
    run.add_argument("--max-restarts", type=int, default=10, help="xpk: restarts inside one workload (spot)")
    run.add_argument("--max-failures", type=int, help="failed launches before a run is marked failed (default 2)")
    run.add_argument("--max-attempts", type=int, help="launches of one run, preemptions included (default 6)")
    run.add_argument("--poll-s", type=float, help="seconds between polls (default 0.5 local, 30 gcloud/xpk)")
    run.add_argument("--wheel", help="gcloud/xpk: our built wheel (default: build it from --source into --wheel-dir)")
    run.add_argument("--source", default=".", help="the moe_jax checkout to build the wheel from")
    run.add_argument("--wheel-dir", default="dist", help="where the wheel is built")
    add_settings_arguments(run)


def plan_sweep(grid_spec: str, sweep_dir: str, runs_root: str | None = None, overrides=()):
    """Expand the grid (plus `--config.K=V` overrides for every run) and create the registry; returns it."""
    from dataclasses import replace

    from moe_jax.sweep.grid import expand, load_grid
    from moe_jax.sweep.registry import Registry

    grid = load_grid(grid_spec)
    extra = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not (key.startswith("--config.") and sep):
            raise UserError(f"unrecognised argument {item!r}; shared overrides look like --config.SECTION.FIELD=VALUE")
        extra[key[len("--config."):]] = value
    grid = replace(grid, overrides={**grid.overrides, **extra})
    runs_root = runs_root or os.path.join(os.path.abspath(sweep_dir), "runs")
    if "://" not in runs_root:
        runs_root = os.path.abspath(runs_root)
    runs = expand(grid, runs_root)
    return Registry.create(sweep_dir, runs, {"grid": grid.name, "grid_spec": grid_spec, "runs_root": runs_root,
                                             "overrides": list(overrides)})


def _plan(args, extra) -> int:
    from moe_jax.sweep.reuse import token_ratio

    registry = plan_sweep(args.grid, args.dir, args.runs_root, extra)
    runs = registry.runs()
    kinds = {k: sum(r.spec.kind == k for r in runs) for k in ("trunk", "branch", "control")}
    ratio = token_ratio([r.spec for r in runs])
    print(f"planned {len(runs)} runs in {registry.dir}: {kinds['trunk']} trunks, {kinds['branch']} branches, "
          f"{kinds['control']} controls")
    print(f"tokens with reuse {ratio['reuse_tokens']:,} vs {ratio['independent_tokens']:,} independent "
          f"({ratio['ratio']:.3f}x); next: moe-jax sweep run --dir {args.dir}")
    return 0


def _run(args) -> int:
    from moe_jax.sweep.files import files_for
    from moe_jax.sweep.registry import Registry
    from moe_jax.sweep.runner import SweepLock, ready_runs, run_sweep
    from moe_jax.sweep.status import format_status
    from moe_jax.tpu.commands import render

    registry = Registry.open(args.dir)
    for name in ("max_failures", "max_attempts"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
            setattr(registry, name, getattr(args, name))
    files = files_for(registry.meta().get("runs_root"))
    with SweepLock(registry.dir):
        backend, parallel = _backend(args, registry)
        if args.dry_run:  # what the next scheduling step would launch; the registry is left as it is
            for argv in backend.preview(ready_runs(registry, files)[:parallel]):
                print(render(argv))
            return 0
        poll_s = args.poll_s if args.poll_s is not None else 0.5 if args.backend == "local" else 30.0
        counts = run_sweep(registry, backend, parallel=parallel, poll_s=poll_s, files=files,
                           say=lambda msg: print(msg, flush=True))
    print(format_status(registry))
    return 0 if counts["done"] == sum(counts.values()) else 1


def _backend(args, registry):
    """(backend, runs at once) for --backend; the cloud ones check their settings first."""
    from moe_jax.sweep.runner import LocalBackend

    if args.backend == "local":
        return LocalBackend(registry.dir), args.parallel or 1
    from moe_jax.tpu.cli import settings_from
    from moe_jax.tpu.runner import Runner
    from moe_jax.tpu.sweep_backend import make_backend

    backend, parallel = make_backend(args, settings_from(args), registry, Runner(dry_run=args.dry_run))
    return backend, min(args.parallel or parallel, parallel)


def _status(args) -> int:
    from moe_jax.sweep.files import files_for
    from moe_jax.sweep.registry import Registry
    from moe_jax.sweep.results import read_result
    from moe_jax.sweep.runner import SweepLock
    from moe_jax.sweep.status import format_status

    registry = Registry.open(args.dir, recreate=args.rescan)
    if args.rescan:
        files = files_for(registry.meta().get("runs_root"))  # gs:// workdirs: read with `gcloud storage`
        with SweepLock(registry.dir):  # never rewrite states under a running launcher
            counts = registry.rescan(lambda record: read_result(record, files))
        print("rescanned the workdirs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    print(format_status(registry))
    return 0


def _collect(args) -> int:
    from moe_jax.sweep.registry import Registry
    from moe_jax.sweep.results import collect_rows, write_csv

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in ("trunk", "branch", "control")]
    if bad or not kinds:
        raise UserError(f"--kinds must list trunk, branch and/or control, got {args.kinds!r}")
    registry = Registry.open(args.dir)
    rows = collect_rows(registry, kinds)
    path = write_csv(rows, args.out)
    total = len([r for r in registry.runs() if r.spec.kind in kinds])
    print(f"wrote {len(rows)} of {total} runs ({', '.join(kinds)}) to {path}; next: moe-jax fit {path} --law joint")
    return 0


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.action == "plan":
        return _plan(args, extra)
    reject_extra(extra)
    return {"run": _run, "status": _status, "collect": _collect}[args.action](args)
