"""`onehot` dispatch: the GShard dispatch/combine einsums over a [T, E, C] mask (a reference)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.kernels.common import check_shapes, positions_in_expert, swiglu


def onehot_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None):
    """Same contract as `capacity_moe`; builds dispatch [T, E, C] and combine [T, E, C] tensors."""
    t, d, k, e, _ = check_shapes(x, expert_idx, gates, w_gate, w_up, w_down)
    c = t if capacity is None else min(int(capacity), t)
    if c == 0:  # every assignment overflows: the layer contributes nothing
        return jnp.zeros_like(x), jnp.zeros((t, k), bool)
    flat_e, pos = positions_in_expert(expert_idx, e)  # [TK]
    kept = pos < c
    # one_hot of an index >= C is all zeros, which drops the assignment.
    mask = jax.nn.one_hot(flat_e, e, dtype=x.dtype)[:, :, None] * jax.nn.one_hot(pos, c, dtype=x.dtype)[:, None, :]
    mask = mask.reshape(t, k, e, c)  # [T, K, E, C]
    dispatch = mask.sum(axis=1)  # [T, E, C]
    combine = (mask * gates.astype(x.dtype)[:, :, None, None]).sum(axis=1)  # [T, E, C]
    buffers = jnp.einsum("tec,td->ecd", dispatch, x)  # [E, C, D]
    out = swiglu(buffers, w_gate, w_up, w_down)  # [E, C, D]
    y = jnp.einsum("tec,ecd->td", combine, out)  # [T, D]
    return y, kept.reshape(t, k)
