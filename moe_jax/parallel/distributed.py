"""Multi-host start-up: `jax.distributed.initialize()` when the environment or the command line asks for it.

    moe-jax train ... --coordinator 10.0.0.2:1234 --num-processes 2 --process-id 0   # explicit
    moe-jax train ... --multi-host     # JAX finds the cluster itself (GCE TPU VM metadata, GKE, SLURM, …)
    moe-jax train ...                  # on a Cloud TPU VM whose env lists several TPU_WORKER_HOSTNAMES: detected

Every process then sees all devices of the slice (jax.devices()) and its own (jax.local_devices());
each feeds its share of every batch and Orbax writes checkpoints collectively.
"""

from __future__ import annotations

import os

from moe_jax.errors import UserError


def on_multi_host_tpu_vm(env=None) -> bool:
    """True on a Cloud TPU VM that is one worker of several (the TPU runtime lists every worker)."""
    env = os.environ if env is None else env
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               env=None, multi_host: bool = False) -> bool:
    """Start jax.distributed if asked (all three flags, `multi_host`, or a multi-host TPU VM env); True when started.

    `multi_host` (`--multi-host`) calls jax.distributed.initialize() without arguments, so JAX's own cluster
    detection finds the workers: on a queued-resource TPU VM the metadata server, where TPU_WORKER_HOSTNAMES
    may be unset.
    Must run before anything touches JAX devices. On CPU, cross-process collectives use gloo.
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise UserError("--coordinator, --num-processes and --process-id must be given together "
                        f"(got coordinator={coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r})")
    if multi_host and any(given):
        raise UserError("--multi-host lets JAX find the cluster itself; drop it, or drop --coordinator, "
                        "--num-processes and --process-id")
    import jax

    if all(given):
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id {process_id} must be in [0, {num_processes}) for --num-processes {num_processes}")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; accelerators use their own
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
        return True
    if multi_host or on_multi_host_tpu_vm(env):
        try:
            jax.distributed.initialize()  # JAX's cluster detection supplies coordinator, process count and id
        except ValueError as err:  # no cluster detected, e.g. --multi-host on a workstation
            raise UserError(f"--multi-host: JAX found no cluster to join ({err}); run on the workers of a "
                            f"multi-host TPU slice (as `moe-jax tpu run` does) or pass --coordinator, "
                            f"--num-processes and --process-id") from None
        return True
    return False
