"""The MoE layer: router + E SwiGLU experts behind a named dispatch (`moe_jax.kernels`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.errors import ConfigError
from moe_jax.kernels import DROPPING, get_dispatch, resolve_dispatch, triton_setting
from moe_jax.model.init import DTYPES, ParamKeys, truncated_param
from moe_jax.model.router import Router, router_stats


def expert_capacity(tokens: int, experts: int, top_k: int, capacity_factor: float) -> int:
    """Capacity per expert over the T tokens of one token group: int(CF · T · k / E) (SPEC §5)."""
    return int(capacity_factor * tokens * top_k / experts)


def pallas_grouped_matmul(tiles=(0, 0, 0)):
    """(lhs [M, K], rhs [G, K, N], group_sizes [G]) -> [M, N] with the Pallas `gmm` (ragged_dot's contract)."""
    from moe_jax.kernels.gmm import gmm

    return lambda lhs, rhs, group_sizes: gmm(lhs, rhs, group_sizes, tiles=tuple(int(v) for v in tiles))


def dispatch_in_groups(name: str, groups: int, x, expert_idx, gates, weights, capacity, *,
                       tiles=(0, 0, 0), ragged_dot_triton="auto"):
    """Each of `groups` token groups dispatched on its own (its own capacity); expert-parallel under a mesh.

    x [G, Tg, D], expert_idx/gates [G, Tg, K], weights (w_gate, w_up, w_down) -> (y [G, Tg, D], kept [G, Tg, K]).
    """
    from moe_jax.parallel.expert_parallel import EXPERT_PARALLEL_DISPATCHES, batch_mesh, expert_parallel_moe

    mesh = batch_mesh()
    if mesh is not None and name in EXPERT_PARALLEL_DISPATCHES:
        local = pallas_grouped_matmul(tiles) if name == "pallas" else None  # our kernel on each device's experts
        return expert_parallel_moe(x, expert_idx, gates, *weights, capacity, mesh, grouped_matmul=local)
    fn = get_dispatch(name, tiles, ragged_dot_triton)
    if not DROPPING[name]:  # without a capacity, groups do not matter: one call on all tokens
        g, tg, d = x.shape
        y, kept = fn(x.reshape(g * tg, d), expert_idx.reshape(g * tg, -1), gates.reshape(g * tg, -1), *weights, None)
        return y.reshape(g, tg, d), kept.reshape(g, tg, -1)
    if groups == 1 or name == "loop":  # the eager loop reference cannot be vmapped
        outs = [fn(x[g], expert_idx[g], gates[g], *weights, capacity) for g in range(groups)]
        return jnp.stack([y for y, _ in outs]), jnp.stack([kept for _, kept in outs])
    return jax.vmap(lambda xg, ig, gg: fn(xg, ig, gg, *weights, capacity))(x, expert_idx, gates)


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
        self.ragged_dot_triton = triton_setting(cfg.ragged_dot_triton)  # 'auto' is resolved when traced
        self.token_groups = max(int(cfg.token_groups), 1)
        self.dtype = DTYPES[cfg.compute_dtype]

    def __call__(self, x, train: bool = True):
        """x [B, S, D] -> (y [B, S, D], stats of `router_stats`). The B sequences form G token groups."""
        b, s, d = x.shape
        g = self.token_groups
        if b % g:
            raise ConfigError(f"a batch of {b} sequences cannot form model.token_groups = {g} equal groups; "
                              f"use a batch size divisible by {g}")
        tokens = x.reshape(b * s, d)  # [T, D]
        logits, probs, gates, expert_idx = self.router(tokens)
        capacity = None
        if DROPPING[self.dispatch]:
            cf = self.cf_train if train else self.cf_eval
            capacity = expert_capacity(b * s // g, self.experts, self.top_k, cf)
        w = lambda p: p[...].astype(self.dtype)  # noqa: E731
        grouped = lambda a: a.reshape(g, b * s // g, a.shape[-1])  # noqa: E731  [T, .] -> [G, T/G, .]
        y, kept = dispatch_in_groups(self.dispatch, g, grouped(tokens), grouped(expert_idx), grouped(gates),
                                     (w(self.w_gate), w(self.w_up), w(self.w_down)), capacity,
                                     tiles=self.tiles, ragged_dot_triton=self.ragged_dot_triton)
        kept = kept.reshape(b * s, -1)  # [T, K]
        return y.reshape(b, s, d).astype(x.dtype), router_stats(logits, probs, expert_idx, kept)
