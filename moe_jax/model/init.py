"""Parameter initialisation (SPEC §5): truncated normal, std = sqrt(scale / fan_in), cut at ±truncation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.model.config import DTYPES  # the one dtype table; imported from here by the model modules


class ParamKeys:
    """One key per parameter, folded from a single `rngs.params()` draw.

    (Drawing from nnx.Rngs per parameter is slow to trace, which made `nnx.eval_shape` of the
    largest paper models take many seconds.)
    """

    def __init__(self, rngs: nnx.Rngs):
        self.base, self.count = rngs.params(), 0

    def __call__(self):
        self.count += 1
        return jax.random.fold_in(self.base, self.count)


def truncated_param(keys: ParamKeys, shape, fan_in: int, cfg, axes: tuple[str, ...]) -> nnx.Param:
    """A parameter drawn from N(0, scale/fan_in) truncated at ±cfg.init_truncation (absolute).

    `axes` are logical axis names (embed, mlp, heads, kv, vocab, exp) kept as metadata for sharding rules.
    """
    std = math.sqrt(cfg.init_scale / fan_in)
    bound = cfg.init_truncation / std
    value = jax.random.truncated_normal(keys(), -bound, bound, shape, jnp.float32) * std
    return nnx.Param(value.astype(DTYPES[cfg.param_dtype]), logical_axes=axes)
