"""`megablox` dispatch: JAX's own TPU grouped matmul (jax.experimental.pallas.ops.tpu.megablox).

Kept for comparison with `pallas`: it needs the tokens permuted into expert order first (the
[T·K, D] copy our fused kernel avoids), M padded to a multiple of the row tile, and a TPU (its grid
depends on traced values, so it has no interpret mode on CPU).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from moe_jax.errors import ConfigError
from moe_jax.kernels.common import check_shapes, swiglu
from moe_jax.kernels.fused import expert_order
from moe_jax.kernels.gather import on_tpu
from moe_jax.kernels.tiling import choose_tiling


def megablox_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None = None, tiles=(0, 0, 0)):
    """Same contract as `dropless_moe` (capacity ignored); raises ConfigError off TPU."""
    if not on_tpu():
        raise ConfigError(
            f"dispatch 'megablox' runs JAX's TPU-only kernel but the backend is {jax.default_backend()}; "
            "use model.dispatch=pallas (the same MoE, runs everywhere) or auto"
        )
    return megablox_moe_tpu(x, expert_idx, gates, w_gate, w_up, w_down, tiles)


def megablox_moe_tpu(x, expert_idx, gates, w_gate, w_up, w_down, tiles=(0, 0, 0)):
    """The megablox MoE without the backend check (lowerable for a TPU target from any host)."""
    from jax.experimental.pallas.ops.tpu import megablox

    t, d, k, e, _ = check_shapes(x, expert_idx, gates, w_gate, w_up, w_down)
    rows, _, inverse, group_sizes = expert_order(expert_idx, e)
    tm = choose_tiling(t * k, d, d, tiles).tm
    padded = -(-t * k // tm) * tm  # megablox needs M to be a multiple of its row tile
    xs = jnp.take(x, jnp.pad(rows, (0, padded - t * k)), axis=0)  # [M, D]: the permuted copy
    tiling = lambda m, kk, n: tuple(vars(choose_tiling(m, kk, n, tiles)).values())  # noqa: E731
    mm = partial(megablox.gmm, group_sizes=group_sizes, preferred_element_type=x.dtype, tiling=tiling)
    ys = swiglu(xs, w_gate, w_up, w_down, matmul=mm)[: t * k]  # [TK, D]; padded rows past T·K are dropped
    y = jnp.take(ys, inverse, axis=0) * gates[:, :, None].astype(ys.dtype)  # [T, K, D]
    return y.sum(axis=1), jnp.ones((t, k), bool)
