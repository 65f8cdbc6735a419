"""What `moe-jax tpu run` starts: the run's name, its gs:// workdir, the config as workers see it, the mesh check."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from moe_jax.errors import UserError
from moe_jax.tpu import commands
from moe_jax.tpu.accelerators import Accelerator
from moe_jax.tpu.mesh import check_mesh_fits, mesh_from_config, parse_mesh_flag
from moe_jax.tpu.settings import Settings, check_bucket

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass
class RunPlan:
    name: str  # names the log files on the workers and, by default, the workdir
    config: str  # the config spec as the workers read it
    workdir: str  # gs://…: checkpoints, metrics, summary.json; re-running the same command resumes
    overrides: list[str] = field(default_factory=list)  # --config.KEY=VALUE, including the --mesh sizes
    upload: str | None = None  # a local config file (not shipped in the package) to copy to the workers first

    def train(self) -> list[str]:
        return commands.train_argv(["--config", self.config, *self.overrides], self.workdir)


def default_run_name(config: str) -> str:
    """'configs/paper.py:d1024_E8' -> 'd1024_E8'; 'configs/tiny.py' -> 'tiny'."""
    path, _, arg = config.partition(":")
    return arg or os.path.splitext(os.path.basename(path))[0]


def plan_run(s: Settings, accelerator: Accelerator, config: str, mesh_flag: str | None, run_name: str | None,
             workdir: str | None, overrides: list[str]) -> RunPlan:
    """Check the run against the slice (mesh size, gs:// workdir, config loads) and plan what to start."""
    from moe_jax.configlib import load_config  # imports JAX via the model config; only `run` needs it

    name = run_name or default_run_name(config)
    if not _RUN_NAME.fullmatch(name):
        raise UserError(f"bad run name {name!r}; use letters, digits, '.', '_' and '-' (pass --run-name)")
    if not workdir:
        if not s.bucket:
            raise UserError("missing bucket: pass --bucket gs://BUCKET (or --workdir gs://…) or set bucket in the "
                            "settings file (--settings tpu.toml)")
        check_bucket(s.bucket)
        workdir = f"{s.bucket.rstrip('/')}/runs/{name}"
    check_bucket(workdir, "workdir")
    flag = parse_mesh_flag(mesh_flag) if mesh_flag else {}
    mesh = {**mesh_from_config(load_config(config, overrides)), **flag}
    if mesh:
        check_mesh_fits(mesh, accelerator.chips, accelerator.name)
    overrides = [*overrides, *(f"--config.mesh.{axis}={size}" for axis, size in flag.items())]
    path, sep, arg = config.partition(":")
    shipped = path.startswith("configs/") or not path.endswith(".py")  # in the wheel: moe_jax.configs
    if shipped or not os.path.isfile(path):
        return RunPlan(name, config, workdir, overrides)
    remote = f"{commands.HOME_DIR}/{os.path.basename(path)}"
    return RunPlan(name, remote + sep + arg, workdir, overrides, upload=path)
