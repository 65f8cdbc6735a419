"""The MoE layer: router + E SwiGLU experts behind a named dispatch (`moe_jax.kernels`)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from moe_jax.kernels import DROPPING, get_dispatch, resolve_dispatch
from moe_jax.model.init import DTYPES, ParamKeys, truncated_param
from moe_jax.model.router import Router, router_stats


def expert_capacity(tokens: int, experts: int, top_k: int, capacity_factor: float) -> int:
    """Capacity per expert over all tokens of the call: int(CF · T · k / E) (SPEC §5)."""
    return int(capacity_factor * tokens * top_k / experts)


class MoE(nnx.Module):
    """Expert weights W_gate, W_up [E, D, F], W_down [E, F, D]; W_down fan_in E·F by default (SPEC §5)."""

    def __init__(self, cfg, keys: ParamKeys):
        d, f, e = cfg.d_model, cfg.ffn_hidden, cfg.experts
        down_fan_in = e * f if cfg.expert_down_fan_in == "experts" else f
        self.router = Router(cfg, keys)
        self.w_gate = truncated_param(keys, (e, d, f), d, cfg, ("exp", "embed", "mlp"))
        self.w_up = truncated_param(keys, (e, d, f), d, cfg, ("exp", "embed", "mlp"))
        self.w_down = truncated_param(keys, (e, f, d), down_fan_in, cfg, ("exp", "mlp", "embed"))
        self.experts, self.top_k = e, cfg.top_k
        self.cf_train, self.cf_eval = float(cfg.capacity_factor_train), float(cfg.capacity_factor_eval)
        self.dispatch = resolve_dispatch(cfg.dispatch)  # `auto` becomes this backend's choice here
        self.tiles = (cfg.tile_m, cfg.tile_k, cfg.tile_n)
        self.ragged_dot_triton = bool(cfg.ragged_dot_triton)
        self.dtype = DTYPES[cfg.compute_dtype]

    def __call__(self, x, train: bool = True):
        """x [B, S, D] -> (y [B, S, D], stats of `router_stats`)."""
        b, s, d = x.shape
        tokens = x.reshape(b * s, d)  # [T, D]
        logits, probs, gates, expert_idx = self.router(tokens)
        capacity = None
        if DROPPING[self.dispatch]:
            cf = self.cf_train if train else self.cf_eval
            capacity = expert_capacity(b * s, self.experts, self.top_k, cf)
        w = lambda p: p[...].astype(self.dtype)  # noqa: E731
        y, kept = get_dispatch(self.dispatch, self.tiles, self.ragged_dot_triton)(
            tokens, expert_idx, gates, w(self.w_gate), w(self.w_up), w(self.w_down), capacity
        )
        return y.reshape(b, s, d).astype(x.dtype), router_stats(logits, probs, expert_idx, kept)
