"""Parameter initialisation (SPEC §5): truncated normal, std = sqrt(scale / fan_in), cut at ±truncation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def truncated_param(rngs: nnx.Rngs, shape, fan_in: int, cfg, axes: tuple[str, ...]) -> nnx.Param:
    """A parameter drawn from N(0, scale/fan_in) truncated at ±cfg.init_truncation (absolute).

    `axes` are logical axis names (embed, mlp, heads, kv, vocab, exp) kept as metadata for sharding rules.
    """
    std = math.sqrt(cfg.init_scale / fan_in)
    bound = cfg.init_truncation / std
    value = jax.random.truncated_normal(rngs.params(), -bound, bound, shape, jnp.float32) * std
    return nnx.Param(value.astype(DTYPES[cfg.param_dtype]), logical_axes=axes)
