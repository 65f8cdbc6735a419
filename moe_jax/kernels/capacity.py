"""`capacity` dispatch: gather tokens into [E, C, D] buffers, one batched SwiGLU, gather back × gate.

The paper's semantics (SPEC §5) and the CPU fast path: no [T, E, C] one-hot tensor, only index
arithmetic. Token→slot is injective, so both directions are row gathers whose gradients are the
inverse gathers (a custom VJP), never scatter-adds, which are slow on CPU.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from moe_jax.kernels.common import check_shapes, positions_in_expert, swiglu


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def gather_rows(x, index, inverse, groups: int):
    """out[i] = x[index[i]] (0 where index[i] = len(x)); `inverse` maps each row of x·groups back.

    x [N, D], index [M] in [0, N], inverse [N·groups] in [0, M] (M = unused) with
    index[inverse[n·groups + g]] = n whenever inverse[...] < M. Returns [M, D].
    """
    return jnp.take(x, index, axis=0, mode="fill", fill_value=0)


def _gather_rows_fwd(x, index, inverse, groups):
    return gather_rows(x, index, inverse, groups), (index, inverse)


def _gather_rows_bwd(groups, residuals, g):
    index, inverse = residuals
    gx = jnp.take(g, inverse, axis=0, mode="fill", fill_value=0)  # [N·groups, D]
    if groups > 1:
        gx = gx.reshape(-1, groups, g.shape[-1]).sum(axis=1)  # [N, D]
    return gx, None, None


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


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
    # Which assignment fills each buffer slot (T·K = empty), and so which token.
    assignment = jnp.full((e * c,), t * k, jnp.int32).at[slot].set(jnp.arange(t * k, dtype=jnp.int32), mode="drop")
    source = assignment // k  # [E·C], T = empty
    buffers = gather_rows(x, source, slot, k).reshape(e, c, d)  # [E, C, D]
    out = swiglu(buffers, w_gate, w_up, w_down).reshape(e * c, d)  # [E·C, D]
    y = gather_rows(out, slot, assignment, 1)  # [TK, D]; dropped -> 0
    y = y * gates.reshape(t * k, 1).astype(y.dtype)
    y = y.reshape(t, k, d).sum(axis=1) if k > 1 else y  # [T, D]
    return y, kept.reshape(t, k)
