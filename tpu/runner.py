"""Run command lines, or only print them (`--dry-run`): one shell-quoted command per line."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from moe_jax.errors import UserError
from moe_jax.tpu.commands import render


@dataclass
class Result:
    """What a command returned (a dry run returns code 0 and no output)."""

    code: int
    out: str = ""
    err: str = ""


class Runner:
    """Runs argv lists; with `dry_run` it prints them to stdout instead and runs nothing."""

    def __init__(self, dry_run: bool = False):
        self.dry_run = dry_run

    def __call__(self, argv: list[str], capture: bool = False, check: bool = True, echo: bool = True) -> Result:
        """Run `argv`; `capture` collects stdout/stderr, `check` turns a non-zero exit into a UserError.

        A real run echoes '+ COMMAND' to stderr first (unless `echo` is False), so the log shows each step.
        """
        line = render(argv)
        if self.dry_run:
            print(line, flush=True)
            return Result(0)
        if echo:
            print(f"+ {line}", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(argv, capture_output=capture, text=True, check=False)
        except FileNotFoundError:
            raise UserError(f"{argv[0]!r} is not on PATH; install it (gcloud: the Google Cloud CLI; "
                            f"xpk: pip install xpk) or use --dry-run") from None
        result = Result(done.returncode, done.stdout or "", done.stderr or "")
        if check and result.code != 0:
            last = result.err.strip().splitlines()[-1:] or [""]
            raise UserError(f"{render(argv[:6])} … failed with exit code {result.code}"
                            + (f": {last[0]}" if last[0] else ""))
        return result


class RecordingRunner(Runner):
    """A dry runner that collects the argv lists instead of printing them (a backend's preview)."""

    def __init__(self):
        super().__init__(dry_run=True)
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], capture: bool = False, check: bool = True, echo: bool = True) -> Result:
        self.calls.append(list(argv))
        return Result(0)
