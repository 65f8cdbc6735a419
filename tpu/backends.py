"""Sweep backends for Cloud TPU: a pool of gcloud queued-resource slices, or xpk workloads on a GKE cluster.

Both implement the sweep runner's Backend protocol (moe_jax.sweep.runner: launch/poll/stop/adopt), so
`run_sweep` drives them with the SQLite registry, its lock and its one retry policy:

    run_sweep(registry, GcloudBackend(settings, accelerator, Runner(), "mj-paper", 4, wheel), parallel=4,
              files=CloudFiles())

The truth about a run is its gs:// workdir: the runner reads summary.json there. A run that ends without
one is reported as preempted (its slice was reclaimed, its workload vanished: resumed without counting a
failure) or failed (a non-zero exit). Either way it is relaunched later with the same command on the same
workdir, which resumes from the last checkpoint. Each handle's `where` (slice or workload) is recorded in
the registry, so a restarted launcher adopts the runs still alive instead of starting them twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass, field

from moe_jax.errors import UserError
from moe_jax.sweep.runner import EXIT_PREEMPTED, Exit
from moe_jax.tpu import commands, slices
from moe_jax.tpu.accelerators import Accelerator
from moe_jax.tpu.runner import RecordingRunner, Runner
from moe_jax.tpu.settings import Settings, require

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise UserError(f"run id {run_id!r} is not usable as a file name on the workers; use letters, digits, . _ -")


@dataclass
class OnSlice:
    """A run placed on a pool slice; started once the slice is ACTIVE and set up."""

    run_id: str
    train: list[str]  # the `moe-jax train …` argv
    where: str  # the slice
    started: bool = False
    stopping: bool = False  # the launcher is stopping: never start it


@dataclass
class GcloudBackend:
    """Runs on a pool of at most `pool_size` queued-resource slices named PREFIX-0 … PREFIX-{N-1}."""

    settings: Settings
    accelerator: Accelerator
    runner: Runner
    prefix: str  # slice names; unique per sweep
    pool_size: int
    wheel: str  # our built wheel, installed on each new slice
    _installed: set = field(default_factory=set, init=False)  # slices this launcher has set up
    _busy: dict = field(default_factory=dict, init=False)  # slice -> run id placed on it

    @property
    def names(self) -> list[str]:
        return [f"{self.prefix}-{i}" for i in range(self.pool_size)]

    def _train(self, record) -> list[str]:
        return commands.train_argv(record.train_args(), None)

    def launch(self, record) -> OnSlice:
        """Place the run on a free slice; `poll` creates/sets up the slice and starts it."""
        _check_run_id(record.id)
        free = [name for name in self.names if name not in self._busy]
        if not free:
            raise UserError(f"all {self.pool_size} slices are busy; run at most --slices runs at once")
        self._busy[free[0]] = record.id
        return OnSlice(record.id, self._train(record), free[0])

    def _described(self, name: str) -> tuple[dict | None, str]:
        described = slices.describe(name, self.settings, self.runner, echo=False)
        if described is not None and not slices.is_ours(described):
            raise UserError(f"slice name {name!r} is taken by a queued resource moe-jax did not create; "
                            f"choose another sweep prefix (--prefix)")
        return described, slices.state_of(described)

    def poll(self, handle: OnSlice) -> Exit | None:
        """Advance the slice (create, replace, set up, start) and report how the run ended, None meanwhile."""
        if handle.stopping and not handle.started:
            return self._ended(handle, EXIT_PREEMPTED, "the launcher stopped before the run started")
        _, state = self._described(handle.where)
        if state in slices.LOST:  # preempted, expired or never granted: replace the slice
            slices.delete(handle.where, self.settings, self.runner)
            self._installed.discard(handle.where)
            if handle.started:
                return self._ended(handle, EXIT_PREEMPTED, f"its slice {handle.where} was {state}")
            return None
        if state == "DELETED":
            self._installed.discard(handle.where)  # a slice made again is a fresh VM: set it up again
            if handle.started:
                return self._ended(handle, EXIT_PREEMPTED, f"its slice {handle.where} disappeared")
            slices.create(handle.where, self.settings, self.accelerator, self.runner)
            return None
        if state != "ACTIVE":
            return None
        if not handle.started:
            self._start(handle)
            return None
        status = slices.probe(handle.where, self.settings, self.runner, handle.run_id)
        if status == "running":
            return None
        if not status.lstrip("-").isdigit():
            return self._ended(handle, EXIT_PREEMPTED, f"its process on {handle.where} is gone (VM restarted?)")
        code = int(status)
        error = "" if code == 0 else f"exit {code} on {handle.where}; see `moe-jax tpu logs {handle.where}`"
        return self._ended(handle, code, error)

    def _ended(self, handle: OnSlice, code: int, error: str) -> Exit:
        self._busy.pop(handle.where, None)
        return Exit(code, error)

    def _start(self, handle: OnSlice) -> None:
        if handle.where not in self._installed:
            slices.setup(handle.where, self.settings, self.runner, self.wheel)
            self._installed.add(handle.where)
        slices.start(handle.where, self.settings, self.runner, handle.run_id, handle.train)
        handle.started = True

    def stop(self, handle: OnSlice) -> None:
        """SIGTERM on the workers: the run saves a checkpoint and exits 143."""
        handle.stopping = True
        if handle.started:
            self.runner(commands.ssh(handle.where, self.settings, "all", commands.stop_training()), check=False)

    def adopt(self, record) -> OnSlice | None:
        """The run a dead launcher left on its slice, if its process is alive there or has exited."""
        where = record.placement
        if not where:
            return None  # placed but never started: nothing runs it
        if where not in self.names:
            raise UserError(f"run {record.id!r} is recorded as running on {where!r}, outside this pool "
                            f"({self.names[0]} … {self.names[-1]}); use the --prefix and --slices the sweep "
                            f"started with")
        if self._described(where)[1] != "ACTIVE" or \
                slices.probe(where, self.settings, self.runner, record.id) == "gone":
            return None
        self._busy[where] = record.id
        return OnSlice(record.id, self._train(record), where, started=True)

    def close(self) -> None:
        """The sweep is over: give back the pool's slices (ours only)."""
        for name in self.names:
            described = slices.describe(name, self.settings, self.runner, echo=False)
            if described is not None and slices.is_ours(described):
                slices.delete(name, self.settings, self.runner)

    def preview(self, records) -> list[list[str]]:
        """What launching `records` on fresh slices runs: create, set up and start each (for --dry-run)."""
        dry = RecordingRunner()
        for name, record in zip(self.names, records):
            slices.create(name, self.settings, self.accelerator, dry)
            slices.setup(name, self.settings, dry, self.wheel)
            slices.start(name, self.settings, dry, record.id, self._train(record))
        return dry.calls


def workload_name(prefix: str, run_id: str, attempt: int) -> str:
    """xpk's rule: [a-z]([-a-z0-9]*[a-z0-9])?, at most 40 characters; long ids become a hash."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    name = f"{prefix}-{slug}-{attempt}"
    if len(name) > 40 or not slug:
        name = f"{prefix[:24]}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}-{attempt}"
    return name


def parse_workload_list(text: str) -> dict[str, str]:
    """{workload: Status column} from `xpk workload list` (a kubectl table after xpk's own log lines)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("Jobset Name")), None)
    if start is None:
        return {}
    table = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if len(cells) >= 7:
            table[cells[0]] = cells[6]  # name, created, priority, needed, running, done, STATUS, message…
    return table


@dataclass
class Workload:
    """A run submitted as one xpk workload."""

    run_id: str
    where: str  # the workload name
    missing: int = 0  # consecutive polls it was not listed


@dataclass
class XpkBackend:
    """Submits each ready run as an xpk workload on an existing GKE cluster; Kueue queues them."""

    settings: Settings
    accelerator: Accelerator
    runner: Runner
    prefix: str  # workload names: PREFIX-RUN-ATTEMPT
    max_restarts: int = 10  # JobSet restarts inside one workload (spot preemption)
    script_dir: str = ""  # holds our wheel, when settings.docker_image is unset

    def __post_init__(self):
        require(self.settings, "project", "zone", "cluster")
        if not self.settings.docker_image and not self.runner.dry_run and \
                not os.path.isfile(os.path.join(self.script_dir or "", commands.wheel_name())):
            raise UserError(f"xpk needs an image with moe_jax: set docker_image in the settings, or give a "
                            f"script dir holding {commands.wheel_name()} (xpk adds it to python:3.11)")

    def _create(self, record, name: str) -> list[str]:
        return commands.xpk_create(name, self.settings, self.accelerator, self.max_restarts,
                                   *self._image_and_command(record))

    def launch(self, record) -> Workload:
        """Submit attempt `record.attempts + 1` (`record` as it was before the runner marked it running)."""
        name = workload_name(self.prefix, record.id, record.attempts + 1)
        self.runner(self._create(record, name))
        return Workload(record.id, name)

    def _table(self) -> dict[str, str]:
        return parse_workload_list(self.runner(commands.xpk_list(self.settings), capture=True, echo=False).out)

    def poll(self, handle: Workload) -> Exit | None:
        status = self._table().get(handle.where)
        handle.missing = 0 if status else handle.missing + 1
        if handle.missing >= 2:  # twice unlisted: deleted or evicted for good
            return Exit(EXIT_PREEMPTED, f"workload {handle.where} is gone")
        if status not in ("Finished", "Failed"):
            return None
        self.runner(commands.xpk_delete(handle.where, self.settings))
        return Exit(0, "") if status == "Finished" else Exit(1, f"workload {handle.where} failed")

    def stop(self, handle: Workload) -> None:
        """Delete the workload: its pods get SIGTERM, save a checkpoint and stop."""
        self.runner(commands.xpk_delete(handle.where, self.settings), check=False)

    def adopt(self, record) -> Workload | None:
        """The workload of the run's current attempt, if the cluster still lists it."""
        where = record.placement or workload_name(self.prefix, record.id, record.attempts)
        return Workload(record.id, where) if where in self._table() else None

    def preview(self, records) -> list[list[str]]:
        return [self._create(r, workload_name(self.prefix, r.id, r.attempts + 1)) for r in records]

    def _image_and_command(self, record) -> tuple[list[str], str]:
        train = shlex.join(commands.train_argv(record.train_args(), None, program="moe-jax"))
        if self.settings.docker_image:
            return [f"--docker-image={self.settings.docker_image}"], train
        install = commands.pip_install("pip", commands.wheel_name())
        return ["--base-docker-image=python:3.11", f"--script-dir={self.script_dir}"], f"{install} && {train}"
