"""`dropless` dispatch: sort assignments by expert, grouped matmuls with `jax.lax.ragged_dot`, unsort."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.kernels.common import check_shapes, swiglu


def dropless_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None = None):
    """Same contract as `capacity_moe`, but every assignment is computed (capacity is ignored)."""
    del capacity
    t, d, k, e, _ = check_shapes(x, expert_idx, gates, w_gate, w_up, w_down)
    flat_e = expert_idx.reshape(-1).astype(jnp.int32)  # [TK]
    order = jnp.argsort(flat_e, stable=True)  # [TK] assignments grouped by expert
    group_sizes = jnp.bincount(flat_e, length=e).astype(jnp.int32)  # [E]
    xs = jnp.take(x, order // k, axis=0)  # [TK, D]
    ys = swiglu(xs, w_gate, w_up, w_down, matmul=lambda a, w: jax.lax.ragged_dot(a, w, group_sizes))  # [TK, D]
    y = jnp.take(ys, jnp.argsort(order), axis=0)  # [TK, D] back in assignment order
    y = (y * gates.reshape(t * k, 1).astype(y.dtype)).reshape(t, k, d).sum(axis=1)  # [T, D]
    return y, jnp.ones((t, k), bool)
