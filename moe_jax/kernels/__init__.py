"""Token dispatch for MoE layers, selected by name. Every implementation has the signature

    fn(x [T, D], expert_idx [T, K] int, gates [T, K], w_gate [E, D, F], w_up [E, D, F],
       w_down [E, F, D], capacity: int | None) -> (y [T, D], kept [T, K] bool)

where y = Σ_k gates[t, k] · SwiGLU_{expert_idx[t, k]}(x[t]) over the kept assignments, and
capacity None means nothing drops. Dropping keeps the earliest assignments in token-major order.
"""

from __future__ import annotations

from moe_jax.errors import ConfigError

DISPATCH_NAMES = ("capacity", "dropless", "onehot", "loop")
# Implementations that honour a capacity limit (dropless never drops).
DROPPING = {"capacity": True, "onehot": True, "loop": True, "dropless": False}


def get_dispatch(name: str):
    """The dispatch function called `name` (imported lazily)."""
    if name == "capacity":
        from moe_jax.kernels.capacity import capacity_moe as fn
    elif name == "dropless":
        from moe_jax.kernels.dropless import dropless_moe as fn
    elif name == "onehot":
        from moe_jax.kernels.onehot import onehot_moe as fn
    elif name == "loop":
        from moe_jax.kernels.reference import loop_moe as fn
    else:
        raise ConfigError(f"unknown dispatch {name!r}; choose one of {', '.join(DISPATCH_NAMES)}")
    return fn
