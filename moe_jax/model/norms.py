"""Pre-norms (SPEC §5): flax.nnx LayerNorm (scale + bias) or RMSNorm (scale); eps 1e-5, math in f32.

The modules are nnx's own; the only addition is the dtype policy: statistics and the affine map run in
f32 (module dtype float32, so nnx promotes x, scale and bias to f32) and the result takes the input's
dtype. Parameters are `scale` [D] and `bias` [D] with logical axes ('norm',): replicated by the sharding rules.
"""

from __future__ import annotations

from flax import nnx

from moe_jax.model.config import DTYPES

EPS = 1e-5  # SPEC §5: LayerNorm eps of the authors' code
_AXES = {"logical_axes": ("norm",)}  # sharding rule: replicated (moe_jax.parallel.rules)


class _InputDtype:
    """Mixin: the f32 result of an nnx norm cast back to the dtype of its input."""

    def __call__(self, x):
        return super().__call__(x).astype(x.dtype)


class LayerNorm(_InputDtype, nnx.LayerNorm):
    """nnx.LayerNorm, result in the input's dtype."""


class RMSNorm(_InputDtype, nnx.RMSNorm):
    """nnx.RMSNorm, result in the input's dtype."""


def Norm(cfg) -> nnx.Module:  # noqa: N802 - used like the class it builds
    """The pre-norm of `cfg.norm` ('layernorm' | 'rmsnorm') over D = cfg.d_model: x [..., D] -> [..., D]."""
    common = dict(epsilon=EPS, dtype=DTYPES["float32"], param_dtype=DTYPES[cfg.param_dtype],
                  use_fast_variance=False, scale_metadata=_AXES, rngs=nnx.Rngs(0))  # ones/zeros: no randomness
    if cfg.norm == "layernorm":
        return LayerNorm(cfg.d_model, bias_metadata=_AXES, **common)
    return RMSNorm(cfg.d_model, **common)
