"""The dense SwiGLU FFN (E = 1): silu(x·W_gate) ⊙ (x·W_up) · W_down, no biases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.model.init import DTYPES, truncated_param


class FFN(nnx.Module):
    """W_gate, W_up [D, F]; W_down [F, D] with fan_in F."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.ffn_hidden
        self.w_gate = truncated_param(rngs, (d, f), d, cfg, ("embed", "mlp"))
        self.w_up = truncated_param(rngs, (d, f), d, cfg, ("embed", "mlp"))
        self.w_down = truncated_param(rngs, (f, d), f, cfg, ("mlp", "embed"))
        self.dtype = DTYPES[cfg.compute_dtype]

    def __call__(self, x):
        """x [..., D] -> [..., D]."""
        w = lambda p: p[...].astype(self.dtype)  # noqa: E731
        h = jax.nn.silu(jnp.einsum("...d,df->...f", x, w(self.w_gate))) * jnp.einsum("...d,df->...f", x, w(self.w_up))
        return jnp.einsum("...f,fd->...d", h, w(self.w_down))
