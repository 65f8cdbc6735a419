"""`capacity` dispatch: scatter tokens into [E, C, D] buffers, one batched SwiGLU, gather back × gate.

The paper's semantics (SPEC §5) and the CPU fast path: no [T, E, C] one-hot tensor, only index
arithmetic, one gather into the buffers and one gather out of them.
"""

from __future__ import annotations

import jax.numpy as jnp

from moe_jax.kernels.common import check_shapes, positions_in_expert, swiglu


def capacity_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None):
    """x [T, D], expert_idx/gates [T, K], weights [E, D, F]/[E, F, D] -> (y [T, D], kept [T, K] bool).

    capacity None means no dropping (C = T, the most one expert can receive with distinct top-k).
    """
    t, d, k, e, _ = check_shapes(x, expert_idx, gates, w_gate, w_up, w_down)
    c = t if capacity is None else min(int(capacity), t)
    if c == 0:  # every assignment overflows: the layer contributes nothing
        return jnp.zeros_like(x), jnp.zeros((t, k), bool)
    flat_e, pos = positions_in_expert(expert_idx, e)  # [TK], [TK]
    kept = pos < c  # [TK]
    slot = jnp.where(kept, flat_e * c + pos, e * c)  # [TK]; e*c = out of range = dropped
    token = jnp.arange(t * k, dtype=jnp.int32) // k  # [TK]
    # Which token fills each buffer slot; empty slots point at an all-zero padding row (index T).
    source = jnp.full((e * c,), t, jnp.int32).at[slot].set(token, mode="drop")  # [E·C]
    x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)], axis=0)  # [T+1, D]
    buffers = jnp.take(x_pad, source, axis=0).reshape(e, c, d)  # [E, C, D]
    out = swiglu(buffers, w_gate, w_up, w_down).reshape(e * c, d)  # [E·C, D]
    y = jnp.take(out, slot, axis=0, mode="fill", fill_value=0)  # [TK, D]; dropped -> 0
    y = y * gates.reshape(t * k, 1).astype(y.dtype)
    y = y.reshape(t, k, d).sum(axis=1) if k > 1 else y  # [T, D]
    return y, kept.reshape(t, k)
