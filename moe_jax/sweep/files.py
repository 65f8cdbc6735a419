"""Reading a run's files wherever its workdir lives: a local path, or gs:// through `gcloud storage`.

    files = files_for("gs://bucket/sweep")   # CloudFiles: `gcloud storage cat|ls` via the TPU command runner
    files.read_text("gs://bucket/sweep/RUN/summary.json")   # None when missing
    files.exists("gs://bucket/sweep/TRUNK/branch_points/16384/meta")

The registry's `ready(point_exists=…)` and the result reader take one of these, so the sweep sees a run's
truth (summary.json, branch points) in its gs:// workdir, and tests answer through a fake `gcloud`.
"""

from __future__ import annotations

from pathlib import Path


def is_cloud(path: str) -> bool:
    return str(path).startswith("gs://")


def join(root: str, *parts: str) -> str:
    """'gs://b/run' + 'summary.json' -> 'gs://b/run/summary.json' (os.path.join would do for local only)."""
    return "/".join([str(root).rstrip("/"), *parts])


class LocalFiles:
    """Files on this machine."""

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def exists(self, path: str) -> bool:
        return Path(path).exists()


class CloudFiles(LocalFiles):
    """gs:// paths through `gcloud storage cat|ls` (run by `runner`, a moe_jax.tpu.runner.Runner); local paths
    directly. Reads only, so it runs even under --dry-run (with its own non-dry runner)."""

    def __init__(self, runner=None):
        from moe_jax.tpu.runner import Runner

        self.runner = runner or Runner()

    def read_text(self, path: str) -> str | None:
        if not is_cloud(path):
            return super().read_text(path)
        result = self.runner(["gcloud", "storage", "cat", path], capture=True, check=False, echo=False)
        return result.out if result.code == 0 else None

    def exists(self, path: str) -> bool:
        if not is_cloud(path):
            return super().exists(path)
        return self.runner(["gcloud", "storage", "ls", path], capture=True, check=False, echo=False).code == 0


LOCAL = LocalFiles()


def files_for(runs_root: str | None):
    """CloudFiles when the sweep's workdirs are in gs://, else LocalFiles."""
    return CloudFiles() if runs_root and is_cloud(runs_root) else LOCAL
