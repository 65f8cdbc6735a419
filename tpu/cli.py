"""`moe-jax tpu create|setup|run|status|logs|stop|delete NAME`: one Cloud TPU slice over gcloud queued resources.

Every action takes --dry-run (print the exact commands, one per line, and run nothing) and reads its
settings from --settings FILE (TOML/JSON) and flags. Bad input is one line and exit 2, before any command.
"""

from __future__ import annotations

import argparse
import re

from moe_jax.cli import reject_extra
from moe_jax.errors import UserError
from moe_jax.tpu import commands, slices
from moe_jax.tpu.runner import Runner
from moe_jax.tpu.runplan import plan_run
from moe_jax.tpu.settings import (Settings, all_labels, checked_accelerator, make_settings, parse_labels,
                                  require)

ACTIONS = {
    "create": "queue a request for a slice (labelled created-by=moe-jax)",
    "setup": "build our wheel, copy it to every worker, install it with jax[tpu]",
    "run": "start `moe-jax train` on every worker, logging to ~/moe-jax/logs/RUN.log",
    "status": "show the slice's state (WAITING_FOR_RESOURCES, ACTIVE, SUSPENDED, …)",
    "logs": "print (or follow) the current run's log on worker 0",
    "stop": "SIGTERM the run on every worker (it saves a checkpoint; `run` again resumes)",
    "delete": "delete the slice, only if moe-jax created it",
}
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", metavar="NAME", help="the queued resource (and TPU VM) name, e.g. moe-v5e-16")
    add_settings_arguments(common)
    return common


def add_settings_arguments(common: argparse.ArgumentParser) -> None:
    """--settings FILE, the settings flags and --dry-run (shared with `moe-jax sweep run`)."""
    common.add_argument("--settings", help="TOML or JSON file with project, zone, bucket, accelerator, capacity, …")
    common.add_argument("--project", help="Google Cloud project id")
    common.add_argument("--zone", help="zone, e.g. us-west4-a (must offer the accelerator)")
    common.add_argument("--bucket", help="gs://BUCKET[/PREFIX]; runs write to BUCKET/runs/RUN")
    common.add_argument("--accelerator", help="slice type: v5litepod-N, v5p-N, v6e-N or v4-N")
    common.add_argument("--runtime-version", help="TPU VM image (default: the one the family needs)")
    capacity = common.add_mutually_exclusive_group()
    for flag, value in (("--spot", "spot"), ("--flex", "flex"), ("--reserved", "reserved"),
                        ("--on-demand", "on-demand")):
        capacity.add_argument(flag, dest="capacity", action="store_const", const=value, help=f"{value} capacity")
    common.add_argument("--max-run-duration", help="flex-start: how long the slice lives, e.g. 24h (at most 7d)")
    common.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="extra label (repeatable)")
    common.add_argument("--dry-run", action="store_true", help="print the exact commands, run nothing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = _common()
    sub = {a: actions.add_parser(a, parents=[common], help=h, description=h) for a, h in ACTIONS.items()}
    sub["setup"].add_argument("--source", default=".", help="the moe_jax checkout to build the wheel from")
    sub["setup"].add_argument("--wheel-dir", default="dist", help="where the wheel is built")
    sub["setup"].add_argument("--wheel", help="install this built wheel instead of building one")
    sub["run"].add_argument("--config", required=True, help="train config, e.g. configs/paper.py:d1024_E8")
    sub["run"].add_argument("--mesh", help="device mesh, e.g. fsdp=4,expert=4 (default: the config's mesh section)")
    sub["run"].add_argument("--run-name", help="names the log and the default workdir (default: the config arg)")
    sub["run"].add_argument("--workdir", help="gs:// run directory (default: BUCKET/runs/RUN)")
    sub["run"].epilog = "Further --config.SECTION.FIELD=VALUE overrides go to `moe-jax train`."
    sub["logs"].add_argument("--lines", type=int, default=100, help="lines to show")
    sub["logs"].add_argument("--follow", action="store_true", help="keep following the log (tail -F)")


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings file with the flags on top; --label adds to the file's labels."""
    flags = {k: getattr(args, k) for k in ("project", "zone", "bucket", "accelerator", "runtime_version",
                                           "capacity", "max_run_duration")}
    settings = make_settings(args.settings, flags)
    settings.labels = {**settings.labels, **parse_labels(args.label)}
    all_labels(settings)  # every action refuses a bad label up front, not only `create`
    return settings


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.action != "run":
        reject_extra(extra)
    if not _NAME.fullmatch(args.name):
        raise UserError(f"bad slice name {args.name!r}; use lowercase letters, digits and '-', starting with a "
                        f"letter (at most 63)")
    settings = settings_from(args)
    runner = Runner(dry_run=args.dry_run)
    return int(_HANDLERS[args.action](args, settings, runner, extra) or 0)


def _create(args, s: Settings, runner: Runner, extra) -> None:
    slices.create(args.name, s, checked_accelerator(s), runner)
    if not runner.dry_run:
        print(f"queued {args.name}; it is usable once `moe-jax tpu status {args.name}` shows ACTIVE")


def _setup(args, s: Settings, runner: Runner, extra) -> None:
    require(s, "project", "zone")
    wheel = slices.local_wheel(args.wheel, args.source, args.wheel_dir, runner)
    slices.setup(args.name, s, runner, wheel)


def _run(args, s: Settings, runner: Runner, extra) -> None:
    accelerator = checked_accelerator(s)
    plan = plan_run(s, accelerator, args.config, args.mesh, args.run_name, args.workdir, extra)
    if plan.upload:
        runner(commands.scp(args.name, s, plan.upload, plan.config.partition(":")[0]))
    slices.start(args.name, s, runner, plan.name, plan.train())
    if not runner.dry_run:
        print(f"started {plan.name} on {args.name}, writing to {plan.workdir}; "
              f"follow it with `moe-jax tpu logs {args.name} --follow`")


def _status(args, s: Settings, runner: Runner, extra) -> None:
    require(s, "project", "zone")
    described = slices.describe(args.name, s, runner)
    if runner.dry_run:
        return
    ours = "" if described is None else ("" if slices.is_ours(described) else " (not created by moe-jax)")
    print(f"{args.name}: {slices.state_of(described)}{ours}")


def _logs(args, s: Settings, runner: Runner, extra) -> None:
    require(s, "project", "zone")
    runner(commands.ssh(args.name, s, "0", commands.tail_log(args.lines, args.follow)))


def _stop(args, s: Settings, runner: Runner, extra) -> None:
    require(s, "project", "zone")
    runner(commands.ssh(args.name, s, "all", commands.stop_training()))


def _delete(args, s: Settings, runner: Runner, extra) -> None:
    require(s, "project", "zone")
    slices.delete(args.name, s, runner)


_HANDLERS = {"create": _create, "setup": _setup, "run": _run, "status": _status, "logs": _logs, "stop": _stop,
             "delete": _delete}
