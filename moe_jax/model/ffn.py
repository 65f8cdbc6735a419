"""The dense SwiGLU FFN (E = 1): silu(x·W_gate) ⊙ (x·W_up) · W_down, no biases."""

from __future__ import annotations

from flax import nnx

from moe_jax.kernels.common import swiglu
from moe_jax.model.init import DTYPES, ParamKeys, truncated_param
from moe_jax.parallel.rules import gathered


class FFN(nnx.Module):
    """W_gate, W_up [D, F]; W_down [F, D] with fan_in F."""

    def __init__(self, cfg, keys: ParamKeys):
        d, f = cfg.d_model, cfg.ffn_hidden
        self.w_gate = truncated_param(keys, (d, f), d, cfg, ("embed", "mlp"))
        self.w_up = truncated_param(keys, (d, f), d, cfg, ("embed", "mlp"))
        self.w_down = truncated_param(keys, (f, d), f, cfg, ("mlp", "embed"))
        self.dtype = DTYPES[cfg.compute_dtype]

    def __call__(self, x):
        """x [..., D] -> [..., D]; computed on [T, D] (2-D matmuls are the fast path on CPU)."""
        w = lambda p: gathered(p).astype(self.dtype)  # noqa: E731
        t = x.reshape(-1, x.shape[-1])  # [T, D]
        return swiglu(t, w(self.w_gate), w(self.w_up), w(self.w_down)).reshape(x.shape)
