"""The TPU backend `moe-jax sweep run --backend gcloud|xpk` drives: settings, wheel and checks, then the backend.

    backend, parallel = make_backend(args, registry, runner)   # UserError (one line) before any command
"""

from __future__ import annotations

import os
import re

from moe_jax.errors import UserError
from moe_jax.tpu import slices
from moe_jax.tpu.backends import GcloudBackend, XpkBackend
from moe_jax.tpu.mesh import AXES, check_mesh_fits
from moe_jax.tpu.runner import Runner
from moe_jax.tpu.settings import check_bucket, checked_accelerator

UNLIMITED = 10**6  # xpk: Kueue queues whatever is submitted


def default_prefix(sweep_dir) -> str:
    """'sweeps/Paper_v1' -> 'mj-paper-v1': slice and workload names of this sweep."""
    slug = re.sub(r"[^a-z0-9]+", "-", os.path.basename(os.path.abspath(sweep_dir)).lower()).strip("-")
    return f"mj-{slug[:20]}".rstrip("-")


def check_cloud_workdirs(registry) -> None:
    """Every run's workdir must be gs://: the workers write there and the launcher reads it."""
    for record in registry.runs():
        if not record.workdir.startswith("gs://"):
            raise UserError(f"run {record.id!r} has the local workdir {record.workdir!r}; TPU workers need gs:// "
                            f"workdirs: plan the sweep with `moe-jax sweep plan … --runs-root gs://BUCKET/PATH`")
        check_bucket(record.workdir, "workdir")


def check_meshes(registry, accelerator) -> None:
    """A mesh given to the sweep's runs (`sweep plan … --config.mesh.AXIS=N`) must fill the slice exactly."""
    for record in registry.runs():
        mesh = {key[len("mesh."):]: int(value) for key, value in record.spec.overrides.items()
                if key.startswith("mesh.") and key[len("mesh."):] in AXES}
        if mesh:
            try:
                check_mesh_fits(mesh, accelerator.chips, accelerator.name)
            except UserError as err:
                raise UserError(f"run {record.id!r}: {err}") from None


def make_backend(args, settings, registry, runner: Runner):
    """(backend, how many runs it takes at once) for args.backend ('gcloud' or 'xpk')."""
    from moe_jax.tpu.cli import _NAME

    if args.cluster:
        settings.cluster = args.cluster
    accelerator = checked_accelerator(settings)
    check_cloud_workdirs(registry)
    check_meshes(registry, accelerator)
    prefix = args.prefix or default_prefix(registry.dir)
    if not _NAME.fullmatch(f"{prefix}-0"):
        raise UserError(f"bad --prefix {prefix!r}; use lowercase letters, digits and '-', starting with a letter")
    if args.backend == "gcloud":
        if args.slices < 1:
            raise UserError(f"--slices must be ≥ 1, got {args.slices}")
        wheel = slices.local_wheel(args.wheel, args.source, args.wheel_dir, runner)
        return GcloudBackend(settings, accelerator, runner, prefix, args.slices, wheel), args.slices
    wheel = "" if settings.docker_image else slices.local_wheel(args.wheel, args.source, args.wheel_dir, runner)
    script_dir = (os.path.dirname(wheel) or ".") if wheel else ""
    backend = XpkBackend(settings, accelerator, runner, prefix, args.max_restarts, script_dir)
    return backend, args.parallel or UNLIMITED
