"""Run a sweep's ready runs in dependency order through a backend, surviving kills at any moment.

    with SweepLock(sweep_dir):                  # a second launcher on the same dir refuses
        run_sweep(registry, LocalBackend(sweep_dir), parallel=2)

A backend launches one run and reports how it ended; the registry bookkeeping is the runner's:
    class Backend(Protocol):
        def launch(self, record) -> handle         # start `moe-jax train *record.train_args()` (or wait for
                                                   # a live process already training it)
        def poll(self, handle) -> Exit | None      # None while it runs
        def stop(self, handle) -> None             # ask it to save and stop (SIGTERM)
        def adopt(self, record) -> handle | None   # a run left 'running' by a dead launcher, if still alive
    A handle with a `where` attribute (slice, workload) is recorded in the registry (`placement`) for adopt;
    a backend with `close()` has it called once the sweep is over (the gcloud pool gives its slices back).
    Backends: LocalBackend here; GcloudBackend and XpkBackend in moe_jax.tpu.backends.

Local runs are `python -m moe_jax.cli train …` subprocesses. Each child holds an flock on
DIR/locks/<run>.lock (inherited, so it outlives a killed launcher) and gets SIGTERM when the launcher
dies (Linux PR_SET_PDEATHSIG), which makes it save a checkpoint and exit; a re-run waits for such a
child before relaunching its run, so no run is ever trained by two processes.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from moe_jax.errors import UserError
from moe_jax.sweep.files import LOCAL
from moe_jax.sweep.registry import point_exists
from moe_jax.sweep.results import read_result

EXIT_PREEMPTED = 143  # moe-jax train saved and stopped on SIGTERM
EXIT_INTERRUPTED = 130  # moe-jax train stopped by Ctrl-C (SIGINT reaches the whole process group)


@dataclass(frozen=True)
class Exit:
    code: int  # process exit status; negative: killed by that signal
    error: str  # one-line error ('' on success)


class Backend(Protocol):
    def launch(self, record): ...

    def poll(self, handle) -> Exit | None: ...

    def stop(self, handle) -> None: ...

    def adopt(self, record): ...


class SweepLock:
    """Exclusive flock on DIR/sweep.lock; released by the kernel when the holder dies (stale-lock safe)."""

    def __init__(self, sweep_dir):
        self.path = Path(sweep_dir) / "sweep.lock"
        self._fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"another `moe-jax sweep run` (pid {holder}) is running on {self.path.parent}; "
                            f"wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self._fd)


def one_line_error(log_path: Path, code: int) -> str:
    """The run's error: the last 'error:' line of its log, else its last line, else the exit status."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if "error:" in ln.lower() or ln.startswith(("Traceback", "Error"))]
    text = errors[-1] if errors else (lines[-1] if lines else "")
    status = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return f"{status}: {text[:300]}" if text else status


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the launcher dies (Linux), so it saves and stops."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class _Local:
    proc: subprocess.Popen | None  # None for an adopted orphan of a dead launcher
    lock_path: Path
    log_path: Path


class LocalBackend:
    """Runs each sweep run as a `python -m moe_jax.cli train …` subprocess on this machine."""

    def __init__(self, sweep_dir):
        self.dir = Path(sweep_dir).absolute()
        (self.dir / "locks").mkdir(exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)

    def _paths(self, record) -> tuple[Path, Path]:
        return self.dir / "locks" / f"{record.id}.lock", self.dir / "logs" / f"{record.id}.log"

    def launch(self, record) -> _Local:
        lock_path, log_path = self._paths(record)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the child inherits it: held while it lives
        except BlockingIOError:  # still trained by a child of a dead launcher: wait for it instead
            os.close(fd)
            return _Local(None, lock_path, log_path)
        try:
            with log_path.open("ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "moe_jax.cli", "train", *record.train_args()],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        pass_fds=(fd,), preexec_fn=_die_with_parent)
        finally:
            os.close(fd)
        return _Local(proc, lock_path, log_path)

    def preview(self, records) -> list[list[str]]:
        """The commands launching `records` would run (for `sweep run --dry-run`)."""
        return [[sys.executable, "-m", "moe_jax.cli", "train", *r.train_args()] for r in records]

    def poll(self, handle: _Local) -> Exit | None:
        if handle.proc is None:  # an orphan: finished once its lock is free
            if _lock_held(handle.lock_path):
                return None
            return Exit(EXIT_PREEMPTED, "left by a stopped launcher")
        code = handle.proc.poll()
        if code is None:
            return None
        return Exit(code, "" if code == 0 else one_line_error(handle.log_path, code))

    def stop(self, handle: _Local) -> None:
        if handle.proc is not None and handle.proc.poll() is None:
            handle.proc.send_signal(signal.SIGTERM)

    def adopt(self, record) -> _Local | None:
        lock_path, log_path = self._paths(record)
        return _Local(None, lock_path, log_path) if _lock_held(lock_path) else None


def _lock_held(path: Path) -> bool:
    """Whether some process holds the flock on `path`."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class _StopRequest:
    """SIGTERM/SIGINT to the launcher: stop launching, ask the running children to save and stop."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def _finish(registry, record, ended: Exit, say, files=LOCAL) -> None:
    """Record how one launch ended: done (with its result), interrupted (resume later) or a failure."""
    result = read_result(registry.get(record.id), files=files)
    if result is not None:  # finished (also when a previous launcher's child finished it)
        registry.mark_done(record.id, result)
        say(f"done     {record.id}: loss {result['loss']:.4f} at {result['tokens']:,} tokens")
        return
    if ended.code == 0:
        ended = Exit(1, "exit 0 but no complete summary.json in the workdir")
    if ended.code in (EXIT_PREEMPTED, EXIT_INTERRUPTED) or ended.code < 0:
        state = registry.mark_interrupted(record.id, ended.error or f"exit {ended.code}")
        say(f"stopped  {record.id} ({ended.error or 'signal'}); {'will resume' if state == 'pending' else 'failed'}")
        return
    state = registry.mark_failed(record.id, ended.error)
    say(f"FAILED   {record.id}: {ended.error}" + ("; will retry" if state == "pending" else ""))


def _adopt_orphans(registry, backend, say) -> dict:
    """Runs left 'running' by a dead launcher: wait for live ones, make the others pending again."""
    active = {}
    for record in registry.runs("running"):
        handle = backend.adopt(record)
        if handle is None:
            registry.mark_interrupted(record.id, "its launcher stopped")
        else:
            say(f"waiting  {record.id}: still running from a previous launcher")
            active[record.id] = (record, handle)
    return active


def ready_runs(registry, files=LOCAL) -> list:
    """The registry's ready runs, with branch points looked up through `files`."""
    return registry.ready(point_exists=lambda workdir, tokens: point_exists(workdir, tokens, files))


def _launch(registry, backend, record, say) -> tuple:
    registry.mark_running(record.id)
    say(f"start    {record.id} ({record.spec.kind}, {record.spec.budget:,} tokens)")
    handle = backend.launch(record)
    if getattr(handle, "where", None):
        registry.set_placement(record.id, handle.where)
    return record, handle


def run_sweep(registry, backend, *, parallel: int = 1, poll_s: float = 0.5, say=print, files=LOCAL) -> dict[str, int]:
    """Launch ready runs (≤ `parallel` at once) until none is left; returns the registry's state counts.

    `files` reads the workdirs (summary.json, branch points): CloudFiles for gs:// sweeps."""
    if parallel < 1:
        raise UserError(f"--parallel must be ≥ 1, got {parallel}")
    active, stopping = _adopt_orphans(registry, backend, say), set()
    with _StopRequest() as stop:
        while True:
            for run_id, (record, handle) in list(active.items()):
                ended = backend.poll(handle)
                if ended is not None:
                    del active[run_id]
                    _finish(registry, record, ended, say, files)
            if stop.signal is not None:
                if not active:
                    break
                for run_id, (_, handle) in active.items():
                    if run_id not in stopping:
                        backend.stop(handle)
                        stopping.add(run_id)
            else:
                for record in ready_runs(registry, files)[: max(parallel - len(active), 0)]:
                    active[record.id] = _launch(registry, backend, record, say)
                if not active:
                    break
            time.sleep(poll_s)
    if stop.signal is not None:
        raise KeyboardInterrupt if stop.signal == signal.SIGINT else SystemExit(EXIT_PREEMPTED)
    if hasattr(backend, "close"):
        backend.close()
    return registry.counts()
