"""A minimal sweep registry in one JSON file: the stand-in the backends are tested with until the SQLite
registry (moe_jax.sweep) implements the same `Registry` protocol. Every call re-reads the file, so a
restarted launcher sees what the previous one recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moe_jax.tpu.backends import Run

STATUSES = ("ready", "running", "done", "failed")


class JsonRegistry:
    """{"runs": [{"id", "train_args", "workdir", "status", "attempts", "where", "reason"}, …]}."""

    def __init__(self, path: str):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str, runs: list[Run]) -> JsonRegistry:
        registry = cls(path)
        registry._write([{"id": r.id, "train_args": list(r.train_args), "workdir": r.workdir, "status": "ready",
                          "attempts": 0, "where": "", "reason": ""} for r in runs])
        return registry

    def runs(self, status: str) -> list[Run]:
        assert status in STATUSES, status
        return [Run(r["id"], r["train_args"], r["workdir"], r["attempts"], r["where"])
                for r in self._read() if r["status"] == status]

    def status(self, run_id: str) -> dict:
        return next(r for r in self._read() if r["id"] == run_id)

    def mark_running(self, run_id: str, where: str) -> None:
        self._update(run_id, status="running", where=where, attempts=self.status(run_id)["attempts"] + 1)

    def mark_done(self, run_id: str) -> None:
        self._update(run_id, status="done")

    def mark_failed(self, run_id: str, reason: str) -> None:
        self._update(run_id, status="failed", reason=reason)

    def _update(self, run_id: str, **fields) -> None:
        rows = self._read()
        next(r for r in rows if r["id"] == run_id).update(fields)
        self._write(rows)

    def _read(self) -> list[dict]:
        return json.loads(self.path.read_text())["runs"]

    def _write(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runs": rows}, indent=1))
        os.replace(tmp, self.path)
