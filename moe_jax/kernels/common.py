"""Pieces shared by the dispatch implementations: the expert FFN and the capacity bookkeeping.

Convention for every dispatch: the (token, choice) assignments are flattened token-major
(assignment a = t·K + k), and within an expert the earliest assignments in that order survive
the capacity limit (SPEC §5: the earliest tokens of the flattened local batch are kept).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def swiglu(x, w_gate, w_up, w_down, matmul=jnp.matmul):
    """The SwiGLU FFN of the whole project (SPEC §5): silu(x·W_gate) ⊙ (x·W_up) · W_down, no biases.

    One expert / the dense FFN: x [T, D], w_gate/w_up [D, F], w_down [F, D] -> [T, D].
    Batched experts: x [E, C, D], w_gate/w_up [E, D, F], w_down [E, F, D] -> [E, C, D].
    `matmul(a, w)` replaces the product, e.g. a grouped `jax.lax.ragged_dot` over expert-sorted tokens.
    """
    h = jax.nn.silu(matmul(x, w_gate)) * matmul(x, w_up)
    return matmul(h, w_down)


def positions_in_expert(expert_idx, num_experts: int):
    """Rank of each assignment among the assignments to the same expert, in token-major order.

    expert_idx [T, K] int -> (flat expert ids [T·K], positions [T·K]) — position 0 is the earliest.
    Computed with a cumulative count over a [T·K, E] indicator (no [T, E, C] tensor).
    """
    e = expert_idx.reshape(-1).astype(jnp.int32)  # [TK]
    indicator = (e[:, None] == jnp.arange(num_experts, dtype=jnp.int32)[None, :]).astype(jnp.int32)  # [TK, E]
    running = jnp.cumsum(indicator, axis=0)  # [TK, E]
    pos = jnp.take_along_axis(running, e[:, None], axis=1)[:, 0] - 1  # [TK]
    return e, pos


def check_shapes(x, expert_idx, gates, w_gate, w_up, w_down) -> tuple[int, int, int, int, int]:
    """Validate the dispatch inputs; returns (T, D, K, E, F)."""
    t, d = x.shape
    k = expert_idx.shape[1]
    e, d2, f = w_gate.shape
    if expert_idx.shape != (t, k) or gates.shape != (t, k):
        raise ValueError(f"expert_idx {expert_idx.shape} and gates {gates.shape} must both be [T={t}, K]")
    if d2 != d or w_up.shape != (e, d, f) or w_down.shape != (e, f, d):
        raise ValueError(f"expert weights {w_gate.shape}, {w_up.shape}, {w_down.shape} do not match D={d}")
    return t, d, k, e, f
