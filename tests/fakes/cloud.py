"""`FakeCloud`: puts the fake `gcloud` and `xpk` (fake_cloud.py) first on PATH and reads what they were asked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FAKE = Path(__file__).with_name("fake_cloud.py")


class FakeCloud:
    def __init__(self, folder: Path, monkeypatch):
        self.dir = folder
        bin_dir = folder / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("gcloud", "xpk"):
            script = bin_dir / tool
            script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {tool} "$@"\n')
            script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_CLOUD_DIR", str(folder))

    def world(self, **state) -> None:
        """Set the canned world (see fake_cloud.py): queued, plans, probes, objects, workloads, xpk_plans."""
        (self.dir / "state.json").write_text(json.dumps(state))

    def update(self, **changes) -> None:
        """Change parts of the world, keeping the rest (e.g. the slices that exist)."""
        (self.dir / "state.json").write_text(json.dumps({**self.state(), **changes}))

    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    def calls(self, tool: str | None = None) -> list[list[str]]:
        """argv of every call so far (without the tool's name), oldest first."""
        log = self.dir / "calls.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [row["argv"] for row in rows if tool in (None, row["tool"])]
