"""`pallas` dispatch: dropless MoE on the Pallas kernels, never building the permuted token copy.

    assignments sorted by expert -> rows [T·K] (token of each sorted row), inverse [T, K]
    a, b = gmm(x through rows, W_gate / W_up)     # x rows read via the index, in expert order
    h = silu(a) ⊙ b;  ys = gmm(h, W_down)          # [T·K, D] in expert order
    y[t] = Σ_k gate[t, k] · ys[inverse[t, k]]      # gather_sum: combine without scatter-add

The backward passes are gathers too: dx sums each token's K rows of the gate and up input
gradients (added in expert order) through `inverse`; d ys reads dy through `rows` scaled by the gates,
and the same kernel dots each gathered dy row with its ys row (d gates, in expert order, [T·K] scalars
taken back to [T, K] through `inverse`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from moe_jax.kernels.common import check_shapes
from moe_jax.kernels.gather import gather_sum
from moe_jax.kernels.gmm import gmm


def expert_order(expert_idx, experts: int):
    """Sorted-by-expert bookkeeping of expert_idx [T, K].

    -> (rows [T·K] token of each sorted row, order [T·K] assignment of each sorted row,
        inverse [T, K] sorted row of each assignment, group_sizes [E]).
    """
    t, k = expert_idx.shape
    flat_e = expert_idx.reshape(-1).astype(jnp.int32)  # [TK], assignment a = t·K + k
    order = jnp.argsort(flat_e, stable=True).astype(jnp.int32)  # [TK]
    inverse = jnp.argsort(order).astype(jnp.int32).reshape(t, k)  # [T, K]
    group_sizes = jnp.bincount(flat_e, length=experts).astype(jnp.int32)  # [E]
    return order // k, order, inverse, group_sizes


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def combine(ys, inverse, order, gates, tile_m: int = 0, interpret=None):
    """y [T, D] = Σ_k gates[t, k] · ys[inverse[t, k]]; ys [T·K, D] in expert order, order its inverse."""
    return gather_sum(ys, inverse, gates, tile_m, interpret)


def _combine_fwd(ys, inverse, order, gates, tile_m, interpret):
    return combine(ys, inverse, order, gates, tile_m, interpret), (ys, inverse, order, gates)


def _combine_bwd(tile_m, interpret, residuals, dy):
    ys, inverse, order, gates = residuals
    k = gates.shape[1]
    sorted_gate = jnp.take(gates.reshape(-1), order)[:, None]  # [TK, 1]
    # Sorted row r: d ys[r] = gate · dy[token of r]; d gate = <ys[r], dy[token of r]>, dotted while in VMEM.
    d_ys, d_sorted_gate = gather_sum(dy, (order // k)[:, None], sorted_gate, tile_m, interpret, other=ys)
    d_gates = jnp.take(d_sorted_gate[:, 0], inverse).astype(gates.dtype)  # [T, K]: sorted row of each assignment
    return d_ys, None, None, d_gates


combine.defvjp(_combine_fwd, _combine_bwd)


def pallas_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None = None,
               tiles=(0, 0, 0), interpret=None):
    """Same contract as `dropless_moe` (capacity ignored, nothing drops); tiles = (tile_m, tile_k, tile_n)."""
    del capacity
    t, d, k, e, _ = check_shapes(x, expert_idx, gates, w_gate, w_up, w_down)
    rows, order, inverse, group_sizes = expert_order(expert_idx, e)
    tiles = tuple(int(v) for v in tiles)
    project = partial(gmm, group_sizes=group_sizes, tiles=tiles, interpret=interpret)
    a, b = project(x, (w_gate, w_up), rows=rows, inverse=inverse)  # [TK, F] each
    # Not kernels.common.swiglu: gate and up share one gmm call that reads x through `rows` once.
    ys = project(jax.nn.silu(a) * b, w_down)  # [TK, D]
    y = combine(ys, inverse, order, gates, tiles[0], interpret)  # [T, D]
    return y, jnp.ones((t, k), bool)
