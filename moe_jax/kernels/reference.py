"""A plain loop over experts: the readable reference every dispatch is tested against (not jittable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.errors import ConfigError
from moe_jax.kernels.common import swiglu


def loop_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None):
    """Same contract as `capacity_moe`. expert_idx must be concrete (it decides the Python loop)."""
    if isinstance(expert_idx, jax.core.Tracer):
        raise ConfigError("dispatch 'loop' is an eager test reference and cannot run under jit; use 'capacity'")
    t, d = x.shape
    k = expert_idx.shape[1]
    flat_e = np.asarray(expert_idx).reshape(-1)  # [TK], token-major
    flat_g = gates.reshape(-1)
    kept = np.zeros(t * k, bool)
    y = jnp.zeros((t, d), x.dtype)
    for e in range(w_gate.shape[0]):
        assignments = np.nonzero(flat_e == e)[0]  # earliest first
        if capacity is not None:
            assignments = assignments[: int(capacity)]
        if assignments.size == 0:
            continue
        kept[assignments] = True
        tokens = assignments // k
        xe = x[tokens]  # [n, D]
        out = swiglu(xe, w_gate[e], w_up[e], w_down[e])  # [n, D]
        y = y.at[tokens].add(out * flat_g[assignments][:, None].astype(x.dtype))
    return y, jnp.asarray(kept.reshape(t, k))
