"""Causal multi-head self-attention with rotate-half RoPE, no biases (SPEC §5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.model.init import DTYPES, ParamKeys, truncated_param
from moe_jax.parallel.rules import gathered


def rope(x, base: float):
    """Rotate-half RoPE: dim i pairs with i + Dh/2. x [B, S, H, Dh] -> same shape."""
    s, dh = x.shape[1], x.shape[3]
    inv_freq = base ** (-jnp.arange(0, dh // 2, dtype=jnp.float32) / (dh // 2))  # [Dh/2]
    angles = jnp.arange(s, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # [S, Dh/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[None, :, None, :]  # [1, S, 1, Dh]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[None, :, None, :]
    x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


class Attention(nnx.Module):
    """Q, K, V [D, H, Dh] and O [H, Dh, D] projections; softmax scale 1/sqrt(Dh)."""

    def __init__(self, cfg, keys: ParamKeys):
        d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.wq = truncated_param(keys, (d, h, dh), d, cfg, ("embed", "heads", "kv"))
        self.wk = truncated_param(keys, (d, h, dh), d, cfg, ("embed", "heads", "kv"))
        self.wv = truncated_param(keys, (d, h, dh), d, cfg, ("embed", "heads", "kv"))
        self.wo = truncated_param(keys, (h, dh, d), h * dh, cfg, ("heads", "kv", "embed"))
        self.rope_base = float(cfg.rope_base)
        self.dtype = DTYPES[cfg.compute_dtype]

    def __call__(self, x):
        """x [B, S, D] -> [B, S, D]. Projections run as 2-D matmuls on [T, D] (much faster on CPU
        than 3-D einsums without batch dimensions)."""
        b, s, d = x.shape
        h, dh = self.wq.shape[1], self.wq.shape[2]
        t = x.reshape(b * s, d)  # [T, D]
        proj = lambda p: (t @ gathered(p).astype(self.dtype).reshape(d, h * dh)).reshape(b, s, h, dh)  # noqa: E731
        q, k, v = rope(proj(self.wq), self.rope_base), rope(proj(self.wk), self.rope_base), proj(self.wv)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # [B, S, H, Dh]
        return (out.reshape(b * s, h * dh) @ gathered(self.wo).astype(self.dtype).reshape(h * dh, d)).reshape(b, s, d)
