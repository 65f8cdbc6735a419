"""The run registry of a sweep: one SQLite file per sweep directory (DIR/sweep.sqlite).

Each row is one run: kind (trunk/branch/control), its `moe-jax train` arguments, workdir, dependencies,
state (pending → running → done | failed), attempts (launches), failures, result and one-line error.
Every change is one short transaction, so a launcher killed at any moment leaves a consistent file.
The truth about a run lives in its workdir (checkpoints, summary.json); `rescan()` rebuilds the states
from there, and DIR/plan.json (written at plan time) recreates a lost registry.

A launcher (the local runner, or a TPU backend) drives it with
    reg = Registry.open(dir)
    for run in reg.ready(): reg.mark_running(run.id); <launch run.train_args in run.workdir>
    reg.mark_done(run.id, result) | reg.mark_failed(run.id, error) | reg.mark_interrupted(run.id)
A cloud launcher also records where a run was started (`set_placement`: its slice or workload), so a
restarted launcher finds it again. `max_failures` / `max_attempts` are the sweep's one retry policy.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_jax.errors import UserError
from moe_jax.paths import require_local
from moe_jax.sweep.files import LOCAL, join
from moe_jax.sweep.grid import RunSpec

DB_NAME, PLAN_NAME = "sweep.sqlite", "plan.json"
STATES = ("pending", "running", "done", "failed")
MAX_FAILURES = 2  # a run that fails this many times is marked failed
MAX_ATTEMPTS = 6  # launches of one run, failures and interruptions (killed, preempted) together

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  seq INTEGER NOT NULL, id TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL, workdir TEXT NOT NULL,
  deps TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT, started REAL, finished REAL, placement TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class RunRecord:
    """A registry row: the run's spec plus its state."""

    spec: RunSpec
    state: str
    attempts: int
    failures: int
    result: dict | None
    error: str | None
    started: float | None
    finished: float | None
    placement: str | None = None  # the slice or workload a cloud backend started it on

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def workdir(self) -> str:
        return self.spec.workdir

    def train_args(self) -> list[str]:
        """Arguments of `moe-jax train` (…`--workdir WORKDIR`…) that run or resume this run."""
        return self.spec.train_args()


def spec_to_json(spec: RunSpec) -> str:
    return json.dumps(asdict(spec))


def spec_from_json(text: str) -> RunSpec:
    raw = json.loads(text)
    raw["deps"] = tuple(tuple(d) for d in raw["deps"])
    raw["overrides"] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["overrides"].items()}
    return RunSpec(**raw)


def point_exists(workdir: str, tokens: int, files=LOCAL) -> bool:
    """Whether a trunk's branch point at `tokens` is completely written (its meta/ appears last)."""
    from moe_jax.train.branching import POINTS_DIR

    return files.exists(join(workdir, POINTS_DIR, str(tokens), "meta"))


def _local_dir(sweep_dir) -> Path:
    """The sweep directory, absolute; a gs:// one is a one-line UserError (SQLite and file locks need a disk)."""
    require_local(sweep_dir, "sweep directory (--dir)", "it holds the SQLite registry and the launcher's lock; "
                  "put the run workdirs in a bucket with `moe-jax sweep plan --runs-root gs://BUCKET/PATH`")
    return Path(sweep_dir).absolute()


class Registry:
    """The SQLite registry of one sweep directory."""

    def __init__(self, sweep_dir: Path, connection: sqlite3.Connection):
        self.dir, self._db = sweep_dir, connection
        self.max_failures, self.max_attempts = MAX_FAILURES, MAX_ATTEMPTS

    @classmethod
    def create(cls, sweep_dir, runs: list[RunSpec], meta: dict) -> "Registry":
        """A new registry holding `runs` (all pending); UserError if `sweep_dir` already has one."""
        sweep_dir = _local_dir(sweep_dir)
        if (sweep_dir / DB_NAME).exists():
            raise UserError(f"{sweep_dir} already holds a sweep ({DB_NAME}); use a new --dir, or "
                            f"`moe-jax sweep run --dir {sweep_dir}` to continue it")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        plan = {"meta": meta, "runs": [asdict(r) for r in runs]}
        tmp = sweep_dir / (PLAN_NAME + ".tmp")
        tmp.write_text(json.dumps(plan, indent=1))
        tmp.replace(sweep_dir / PLAN_NAME)
        return cls._build(sweep_dir, runs, meta)

    @classmethod
    def _build(cls, sweep_dir: Path, runs: list[RunSpec], meta: dict) -> "Registry":
        tmp = sweep_dir / (DB_NAME + ".tmp")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        with db:
            db.executescript(_SCHEMA)
            db.executemany("INSERT INTO runs (seq, id, kind, spec, workdir, deps) VALUES (?, ?, ?, ?, ?, ?)",
                           [(i, r.id, r.kind, spec_to_json(r), r.workdir, json.dumps(r.deps)) for i, r in enumerate(runs)])
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.close()
        tmp.replace(sweep_dir / DB_NAME)  # the registry appears complete or not at all
        return cls.open(sweep_dir)

    @classmethod
    def open(cls, sweep_dir, *, recreate: bool = False) -> "Registry":
        """The registry of `sweep_dir`; with `recreate`, rebuilt from DIR/plan.json when the file is missing."""
        sweep_dir = _local_dir(sweep_dir)
        path = sweep_dir / DB_NAME
        if not path.exists():
            plan = sweep_dir / PLAN_NAME
            if recreate and plan.exists():
                raw = json.loads(plan.read_text())
                runs = [spec_from_json(json.dumps(r)) for r in raw["runs"]]
                return cls._build(sweep_dir, runs, raw["meta"])
            raise UserError(f"no sweep registry in {sweep_dir} ({DB_NAME} is missing); create one with "
                            f"`moe-jax sweep plan --grid NAME --dir {sweep_dir}`")
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        if "placement" not in {row["name"] for row in db.execute("PRAGMA table_info(runs)")}:
            db.execute("ALTER TABLE runs ADD COLUMN placement TEXT")  # a registry from before cloud backends
        return cls(sweep_dir, db)

    def close(self) -> None:
        self._db.close()

    def meta(self) -> dict:
        return {row["key"]: json.loads(row["value"]) for row in self._db.execute("SELECT * FROM meta")}

    def runs(self, state: str | None = None) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY seq").fetchall()
        records = [RunRecord(spec_from_json(r["spec"]), r["state"], r["attempts"], r["failures"],
                             json.loads(r["result"]) if r["result"] else None, r["error"], r["started"], r["finished"], r["placement"])
                   for r in rows]
        return [r for r in records if state is None or r.state == state]

    def get(self, run_id: str) -> RunRecord:
        match = [r for r in self.runs() if r.id == run_id]
        if not match:
            raise UserError(f"no run {run_id!r} in the sweep registry of {self.dir}")
        return match[0]

    def ready(self, point_exists=point_exists) -> list[RunRecord]:
        """Pending runs whose dependencies are met (in plan order): a dependency (run, 0) needs that run done;
        (run, tokens) needs its branch point at `tokens` written, so a branch may start while its trunk trains."""
        records = self.runs()
        by_id = {r.id: r for r in records}
        out = []
        for r in records:
            if r.state != "pending":
                continue
            if all(by_id[dep].state == "done" or (tokens and point_exists(by_id[dep].workdir, tokens))
                   for dep, tokens in r.spec.deps):
                out.append(r)
        return out

    def blocked_by_failure(self) -> dict[str, str]:
        """{pending run id: the failed run it waits for}."""
        records = self.runs()
        failed = {r.id for r in records if r.state == "failed"}
        return {r.id: dep for r in records if r.state == "pending" for dep, _ in r.spec.deps if dep in failed}

    def _update(self, run_id: str, sql: str, *params) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(f"UPDATE runs SET {sql} WHERE id = ?", (*params, run_id))
            if cursor.rowcount != 1:
                raise UserError(f"no run {run_id!r} in the sweep registry of {self.dir}")

    def mark_running(self, run_id: str) -> None:
        self._update(run_id, "state = 'running', attempts = attempts + 1, started = ?, error = NULL, placement = NULL",
                     time.time())

    def set_placement(self, run_id: str, where: str) -> None:
        """Where the running run was started (a slice, a workload), for a restarted launcher to find it."""
        self._update(run_id, "placement = ?", where)

    def mark_done(self, run_id: str, result: dict) -> None:
        self._update(run_id, "state = 'done', result = ?, error = NULL, finished = ?", json.dumps(result), time.time())

    def mark_failed(self, run_id: str, error: str) -> str:
        """Count a failure; the run goes back to pending, or to failed after `max_failures`. Returns the new state."""
        record = self.get(run_id)
        failures = record.failures + 1
        state = "failed" if failures >= self.max_failures or record.attempts >= self.max_attempts else "pending"
        self._update(run_id, "state = ?, failures = ?, error = ?, finished = ?", state, failures, error, time.time())
        return state

    def mark_interrupted(self, run_id: str, reason: str) -> str:
        """A run stopped from outside (killed, preempted, launcher stopped): pending again, to resume from its
        checkpoint — failed only once it has been launched `max_attempts` times. Returns the new state."""
        record = self.get(run_id)
        state = "failed" if record.attempts >= self.max_attempts else "pending"
        error = f"{reason} (launched {record.attempts} times)" if state == "failed" else reason
        self._update(run_id, "state = ?, error = ?", state, error)
        return state

    def rescan(self, read_result) -> dict[str, int]:
        """Rebuild states from the workdirs: `read_result(record)` → result dict when the run finished, else None.

        A finished run becomes done; a run marked done or running without a result becomes pending (a
        failed run stays failed). Returns {state: count}."""
        for record in self.runs():
            result = read_result(record)
            if result is not None:
                if record.state != "done" or record.result != result:
                    self.mark_done(record.id, result)
            elif record.state in ("done", "running"):
                self._update(record.id, "state = 'pending', result = NULL")
        return self.counts()

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for record in self.runs():
            out[record.state] += 1
        return out
