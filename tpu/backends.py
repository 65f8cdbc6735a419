"""Sweep backends for Cloud TPU: a pool of gcloud queued-resource slices, or xpk workloads on a GKE cluster.

A backend advances a sweep one poll at a time (`step`) against a registry of runs. The truth about a run
is its gs:// workdir: a run is done once its summary.json exists there; a run that ended without one
(preempted, crashed, its slice reclaimed) is started again with the same command on the same workdir,
which resumes from the last checkpoint, until `max_retries` relaunches are used up. A run is marked
running (with where it runs) *before* it is started, so a launcher that dies and is started again finds
it, probes it and relaunches it only if it is not alive: runs are neither duplicated nor lost.
`drive` holds a lock file for the whole sweep, so a second launcher on the same sweep refuses.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from moe_jax.errors import UserError
from moe_jax.tpu import commands, slices
from moe_jax.tpu.accelerators import Accelerator
from moe_jax.tpu.runner import Runner
from moe_jax.tpu.settings import Settings, require


@dataclass
class Run:
    """One run of a sweep as a backend sees it."""

    id: str  # unique in the sweep; names files on workers and workloads
    train_args: list[str]  # after `moe-jax train`, without --workdir: ['--config', SPEC, '--config.K=V', …]
    workdir: str  # gs://…/RUN: checkpoints, metrics, summary.json
    attempts: int = 0  # launches so far
    where: str = ""  # the slice or workload running it (status 'running')


class Registry(Protocol):
    """What the backends need of the sweep registry."""

    def runs(self, status: str) -> list[Run]:
        """Runs with status 'ready', 'running', 'done' or 'failed', in launch order."""

    def mark_running(self, run_id: str, where: str) -> None:
        """Status 'running' on `where`; counts one more attempt."""

    def mark_done(self, run_id: str) -> None: ...

    def mark_failed(self, run_id: str, reason: str) -> None: ...


class SweepLock:
    """An exclusive lock file: one launcher per sweep. Released when the holder exits, even if it crashes."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    def __enter__(self) -> SweepLock:
        self._file = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise UserError(f"another launcher (pid {holder}) is driving this sweep (lock {self.path}); "
                            f"let it finish or stop it first") from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def drive(registry: Registry, backend, lock_path: str, poll_s: float = 60.0,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Advance the sweep until no run is ready or running, polling every `poll_s` seconds."""
    with SweepLock(lock_path):
        while backend.step(registry):
            sleep(poll_s)


def _relaunch_or_fail(run: Run, max_retries: int, reason: str, registry: Registry, launch: Callable) -> None:
    """Relaunch `run` if it has retries left (attempts - 1 < max_retries), else mark it failed."""
    if run.attempts <= max_retries:
        launch(run)
    else:
        registry.mark_failed(run.id, f"{reason}; gave up after {run.attempts} attempts")


@dataclass
class GcloudBackend:
    """Runs on a pool of at most `pool_size` queued-resource slices named PREFIX-0 … PREFIX-{N-1}."""

    settings: Settings
    accelerator: Accelerator
    runner: Runner
    prefix: str  # slice names; unique per sweep
    pool_size: int
    wheel: str  # our built wheel, installed on each new slice
    max_retries: int = 3
    _installed: set = field(default_factory=set, init=False)  # slices this launcher has set up

    def step(self, registry: Registry) -> bool:
        """One poll: create/replace slices, install, start, probe, relaunch. False once the sweep is over."""
        names = [f"{self.prefix}-{i}" for i in range(self.pool_size)]
        states = {name: slices.describe(name, self.settings, self.runner, echo=False) for name in names}
        running = {run.where: run for run in registry.runs("running")}
        stray = next((run for where, run in running.items() if where not in names), None)
        if stray:
            raise UserError(f"run {stray.id!r} is recorded as running on {stray.where!r}, outside this pool "
                            f"({names[0]} … {names[-1]}); use the prefix and pool size the sweep started with")
        ready = registry.runs("ready")
        if not running and not ready:
            for name in names:  # sweep over: give the slices back
                if states[name] is not None and slices.is_ours(states[name]):
                    slices.delete(name, self.settings, self.runner)
            return False
        idle = [n for n in names if n not in running and slices.state_of(states[n]) not in ("DELETED", *slices.LOST)]
        to_create = len(ready) - len(idle)
        for name in names:
            state, run = slices.state_of(states[name]), running.get(name)
            if state == "DELETED":  # (re)create it for its run, or for a ready run that has no slice yet
                if run is None:
                    if to_create <= 0:
                        continue
                    to_create -= 1
                slices.create(name, self.settings, self.accelerator, self.runner)
                continue
            if not slices.is_ours(states[name]):
                raise UserError(f"slice name {name!r} is taken by a queued resource moe-jax did not create; "
                                f"choose another sweep prefix")
            if state in slices.LOST:  # preempted or failed: replace it; its run restarts on the new slice
                slices.delete(name, self.settings, self.runner)
                self._installed.discard(name)
            elif state == "ACTIVE" and run:
                self._check(name, run, registry)
            elif state == "ACTIVE" and ready:
                self._launch(name, ready.pop(0), registry)
            elif state == "ACTIVE":
                slices.delete(name, self.settings, self.runner)  # nothing left to run here
        return True

    def _check(self, name: str, run: Run, registry: Registry) -> None:
        status = slices.probe(name, self.settings, self.runner, run.id)
        if status == "running":
            return
        if slices.summary_exists(run.workdir, self.runner):
            registry.mark_done(run.id)
            return
        reason = "its slice was replaced" if status == "gone" else f"exit code {status}"
        _relaunch_or_fail(run, self.max_retries, reason, registry, lambda r: self._launch(name, r, registry))

    def _launch(self, name: str, run: Run, registry: Registry) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", run.id):
            registry.mark_failed(run.id, f"run id {run.id!r} is not usable as a file name")
            return
        if name not in self._installed:
            slices.setup(name, self.settings, self.runner, self.wheel)
            self._installed.add(name)
        registry.mark_running(run.id, name)  # first: a launcher dying here relaunches, never duplicates
        slices.start(name, self.settings, self.runner, run.id, commands.train_argv(run.train_args, run.workdir))


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
class XpkBackend:
    """Submits each ready run as an xpk workload on an existing GKE cluster; Kueue queues them."""

    settings: Settings
    accelerator: Accelerator
    runner: Runner
    prefix: str  # workload names: PREFIX-RUN-ATTEMPT
    max_restarts: int = 10  # JobSet restarts inside one workload (spot preemption)
    max_retries: int = 2  # new workloads after one ended without summary.json
    script_dir: str = ""  # holds our wheel, when settings.docker_image is unset
    _missing: dict = field(default_factory=dict, init=False)  # workload -> consecutive polls it was not listed

    def __post_init__(self):
        require(self.settings, "project", "zone", "cluster")
        if not self.settings.docker_image and not os.path.isfile(os.path.join(self.script_dir or "",
                                                                             commands.wheel_name())):
            raise UserError(f"xpk needs an image with moe_jax: set docker_image in the settings, or give a "
                            f"script dir holding {commands.wheel_name()} (xpk adds it to python:3.11)")

    def step(self, registry: Registry) -> bool:
        running, ready = registry.runs("running"), registry.runs("ready")
        if not running and not ready:
            return False
        table = parse_workload_list(self.runner(commands.xpk_list(self.settings), capture=True, echo=False).out) \
            if running else {}
        for run in running:
            status = table.get(run.where)
            self._missing[run.where] = 0 if status else self._missing.get(run.where, 0) + 1
            if status == "Finished" or self._missing[run.where] >= 2:  # twice unlisted: it is gone
                self._finish(run, listed=status is not None, registry=registry)
        for run in ready:
            self._launch(run, registry)
        return True

    def _finish(self, run: Run, listed: bool, registry: Registry) -> None:
        if listed:
            self.runner(commands.xpk_delete(run.where, self.settings))
        if slices.summary_exists(run.workdir, self.runner):
            registry.mark_done(run.id)
        else:
            _relaunch_or_fail(run, self.max_retries, f"workload {run.where} ended without summary.json", registry,
                              lambda r: self._launch(r, registry))

    def _launch(self, run: Run, registry: Registry) -> None:
        name = workload_name(self.prefix, run.id, run.attempts + 1)
        registry.mark_running(run.id, name)  # first: a launcher dying here relaunches, never duplicates
        self.runner(commands.xpk_create(name, self.settings, self.accelerator, self.max_restarts,
                                        *self._image_and_command(run)))

    def _image_and_command(self, run: Run) -> tuple[list[str], str]:
        train = shlex.join(commands.train_argv(run.train_args, run.workdir, program="moe-jax"))
        if self.settings.docker_image:
            return [f"--docker-image={self.settings.docker_image}"], train
        install = commands.pip_install("pip", commands.wheel_name())
        return ["--base-docker-image=python:3.11", f"--script-dir={self.script_dir}"], f"{install} && {train}"
