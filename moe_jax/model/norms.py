"""Pre-norms (SPEC §5): LayerNorm with scale and bias, or RMSNorm with scale; eps 1e-5, math in f32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.model.init import DTYPES
from moe_jax.parallel.rules import gathered

EPS = 1e-5  # SPEC §5: LayerNorm eps of the authors' code


class Norm(nnx.Module):
    """x [..., D] -> [..., D] normalised over D; `kind` = 'layernorm' | 'rmsnorm'."""

    def __init__(self, cfg):
        d, dtype = cfg.d_model, DTYPES[cfg.param_dtype]
        self.kind = cfg.norm
        self.scale = nnx.Param(jnp.ones((d,), dtype), logical_axes=("embed",))
        self.bias = nnx.Param(jnp.zeros((d,), dtype), logical_axes=("embed",)) if self.kind == "layernorm" else None

    def __call__(self, x):
        h = x.astype(jnp.float32)
        if self.kind == "layernorm":
            h = h - jnp.mean(h, axis=-1, keepdims=True)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + EPS)
        h = h * gathered(self.scale).astype(jnp.float32)
        if self.bias is not None:
            h = h + gathered(self.bias).astype(jnp.float32)
        return h.astype(x.dtype)
