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


def capacity_slots(expert_idx, num_experts: int, capacity: int):
    """Where each assignment goes in [E, C] buffers (earliest kept), and which assignment fills each slot.

    expert_idx [T, K] -> (slot [T·K] in [0, E·C] (E·C = dropped), assignment [E·C] in [0, T·K] (T·K = empty),
    kept [T·K] bool).
    """
    t, k = expert_idx.shape
    e, c = num_experts, capacity
    flat_e, pos = positions_in_expert(expert_idx, e)  # [TK], [TK]
    kept = pos < c  # [TK]
    slot = jnp.where(kept, flat_e * c + pos, e * c)  # [TK]; e*c = out of range = dropped
    assignment = jnp.full((e * c,), t * k, jnp.int32).at[slot].set(jnp.arange(t * k, dtype=jnp.int32), mode="drop")
    return slot, assignment, kept


def dispatch_to_buffers(x, slot, assignment, k: int, num_experts: int, capacity: int):
    """x [T, D] -> buffers [E, C, D] (empty slots are 0)."""
    buffers = gather_rows(x, assignment // k, slot, k)  # [E·C, D]; assignment T·K -> token T = empty
    return buffers.reshape(num_experts, capacity, x.shape[-1])


def combine_from_buffers(out, slot, assignment, gates):
    """out [E, C, D] expert outputs -> y [T, D] = Σ_k gate · output of the kept assignment (dropped -> 0)."""
    t, k = gates.shape
    d = out.shape[-1]
    y = gather_rows(out.reshape(-1, d), slot, assignment, 1)  # [TK, D]
    y = y * gates.reshape(t * k, 1).astype(y.dtype)
    return y.reshape(t, k, d).sum(axis=1) if k > 1 else y  # [T, D]


def capacity_of(tokens: int, capacity: int | None) -> int:
    """The buffer length C: the capacity, at most T (the most one expert can receive); None = T (no dropping)."""
    return tokens if capacity is None else min(int(capacity), tokens)


def capacity_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None):
    """x [T, D], expert_idx/gates [T, K], weights [E, D, F]/[E, F, D] -> (y [T, D], kept [T, K] bool).

    capacity None means no dropping (C = T, the most one expert can receive with distinct top-k).
    """
    t, d, k, e, _ = check_shapes(x, expert_idx, gates, w_gate, w_up, w_down)
    c = capacity_of(t, capacity)
    if c == 0:  # every assignment overflows: the layer contributes nothing
        return jnp.zeros_like(x), jnp.zeros((t, k), bool)
    slot, assignment, kept = capacity_slots(expert_idx, e, c)
    buffers = dispatch_to_buffers(x, slot, assignment, k, e, c)  # [E, C, D]
    out = swiglu(buffers, w_gate, w_up, w_down)  # [E, C, D]
    return combine_from_buffers(out, slot, assignment, gates), kept.reshape(t, k)
