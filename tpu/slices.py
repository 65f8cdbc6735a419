"""One slice's life over gcloud: create, read state, install, start/probe/stop a run, delete (ours only).

Each function takes the slice (queued resource) name, the Settings and a Runner; with a dry-run Runner
every command is printed instead of run. The queued resource and its TPU VM node share the name.
"""

from __future__ import annotations

import json
import os

from moe_jax.errors import UserError
from moe_jax.paths import require_local
from moe_jax.tpu import commands
from moe_jax.tpu.accelerators import Accelerator
from moe_jax.tpu.runner import Runner
from moe_jax.tpu.settings import OUR_LABEL, Settings

WAITING = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING")  # ACCEPTED: older name of WAITING_…
LOST = ("SUSPENDING", "SUSPENDED", "FAILED")  # preempted (spot), expired (flex) or never granted


def create(name: str, s: Settings, accelerator: Accelerator, run: Runner) -> None:
    run(commands.create_queued_resource(name, s, accelerator))


def describe(name: str, s: Settings, run: Runner, echo: bool = True) -> dict | None:
    """The queued resource as gcloud describes it; None if it does not exist (or in a dry run)."""
    result = run(commands.describe_queued_resource(name, s), capture=True, check=False, echo=echo)
    if run.dry_run:
        return None
    if result.code != 0:
        if "NOT_FOUND" in result.err or "not found" in result.err.lower():
            return None
        raise UserError(f"cannot describe queued resource {name!r}: {(result.err.strip().splitlines() or [''])[-1]}")
    try:
        return json.loads(result.out)
    except json.JSONDecodeError:
        raise UserError(f"gcloud described queued resource {name!r} in a form we cannot read (not JSON)") from None


def state_of(described: dict | None) -> str:
    """'ACTIVE', 'SUSPENDED', … or 'DELETED' when the resource does not exist."""
    return "DELETED" if described is None else str(described.get("state", {}).get("state", "UNKNOWN"))


def labels_of(described: dict) -> dict[str, str]:
    """Labels common to all the resource's TPU nodes (gcloud puts --labels on tpu.nodeSpec[].node)."""
    specs = described.get("tpu", {}).get("nodeSpec", [])
    label_sets = [spec.get("node", {}).get("labels", {}) or {} for spec in specs]
    if not label_sets:
        return {}
    return {k: v for k, v in label_sets[0].items() if all(ls.get(k) == v for ls in label_sets)}


def is_ours(described: dict) -> bool:
    return labels_of(described).get(OUR_LABEL[0]) == OUR_LABEL[1]


def delete(name: str, s: Settings, run: Runner) -> None:
    """Delete the queued resource (and its VMs) only if it carries our label; UserError naming it otherwise."""
    described = describe(name, s, run)
    if not run.dry_run:
        if described is None:
            raise UserError(f"queued resource {name!r} does not exist in {s.project}/{s.zone}; nothing to delete")
        if not is_ours(described):
            raise UserError(f"refusing to delete queued resource {name!r}: it lacks the label "
                            f"{OUR_LABEL[0]}={OUR_LABEL[1]}, so moe-jax did not create it")
    run(commands.delete_queued_resource(name, s))


def setup(name: str, s: Settings, run: Runner, wheel: str) -> None:
    """Copy the wheel to every worker and install it with jax[tpu] in a Python 3.11 venv."""
    if not run.dry_run and not os.path.isfile(wheel):
        raise UserError(f"wheel not found: {wheel!r}; build it with `python -m pip wheel --no-deps . -w dist`")
    run(commands.scp(name, s, wheel, os.path.basename(wheel)))
    run(commands.ssh(name, s, "all", commands.install_on_worker(os.path.basename(wheel))))


def local_wheel(wheel: str | None, source: str, out_dir: str, run: Runner) -> str:
    """The given --wheel (a local file: scp and xpk copy it from here), else one built from `source`."""
    if wheel:
        require_local(wheel, "--wheel", "it is copied to the workers from this machine")
        return wheel
    return build_wheel(source, out_dir, run)


def build_wheel(source: str, out_dir: str, run: Runner) -> str:
    """Build our wheel from the checkout at `source` into `out_dir`; returns its path."""
    for path, flag in ((source, "--source"), (out_dir, "--wheel-dir")):
        require_local(path, flag, "pip builds the wheel on this machine")
    if not os.path.isfile(os.path.join(source, "pyproject.toml")):
        raise UserError(f"no pyproject.toml in {source!r}; run from the moe_jax checkout, pass --source DIR, "
                        f"or give a built wheel with --wheel PATH")
    run(commands.build_wheel(source, out_dir))
    return os.path.join(out_dir, commands.wheel_name())


def start(name: str, s: Settings, run: Runner, run_name: str, train: list[str]) -> None:
    """Start the train command on every worker, detached, logging to ~/moe-jax/logs/RUN.log."""
    run(commands.ssh(name, s, "all", commands.start_in_background(run_name, train)))


def probe(name: str, s: Settings, run: Runner, run_name: str) -> str:
    """'running', 'gone' (no process, no exit code: e.g. a fresh VM) or the exit code, read on worker 0."""
    result = run(commands.ssh(name, s, "0", commands.probe_run(run_name)), capture=True, check=False, echo=False)
    lines = result.out.strip().splitlines()
    return lines[-1].strip() if result.code == 0 and lines else "gone"

