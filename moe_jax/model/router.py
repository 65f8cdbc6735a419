"""The token-choice router (f32 math) and its auxiliary losses and metrics (SPEC §5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.model.init import ParamKeys, truncated_param
from moe_jax.parallel.rules import gathered


class Router(nnx.Module):
    """Linear d -> E, softmax over all experts, top-k by probability."""

    def __init__(self, cfg, keys: ParamKeys):
        self.w = truncated_param(keys, (cfg.d_model, cfg.experts), cfg.d_model, cfg, ("embed", "exp"))
        self.top_k = cfg.top_k

    def __call__(self, x):
        """x [T, D] -> (logits [T, E] f32, probs [T, E] f32, gates [T, K] raw probs, expert_idx [T, K])."""
        logits = jnp.einsum("td,de->te", x.astype(jnp.float32), gathered(self.w).astype(jnp.float32))
        probs = jax.nn.softmax(logits, axis=-1)
        gates, expert_idx = jax.lax.top_k(probs, self.top_k)
        return logits, probs, gates, expert_idx


def router_stats(logits, probs, expert_idx, kept) -> dict:
    """Unweighted per-layer router losses and metrics.

    load_balance_loss = E · Σ_e mean_t(p_e) · count_e / T (SPEC §5, as the paper's code computes it), with
    count_e the assignments routed to e before dropping: a uniform router scores 1 at top-1 and K at top-K;
    z_loss = mean_t(logsumexp_e logits)²; expert_load [E] = count_e / (T·K), each expert's share of the
    assignments (sums to 1 at any K); dropped_fraction = share of assignments over capacity;
    router_entropy = mean_t H(p). logits/probs [T, E], expert_idx/kept [T, K].
    """
    t, e = expert_idx.shape[0], probs.shape[-1]
    counts = jnp.bincount(expert_idx.reshape(-1), length=e).astype(jnp.float32)  # [E]
    counts = jax.lax.stop_gradient(counts)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [T]
    return {
        "load_balance_loss": e * jnp.sum(jnp.mean(probs, axis=0) * counts / t),
        "z_loss": jnp.mean(lse**2),
        "expert_load": counts / expert_idx.size,
        "dropped_fraction": jnp.mean(jnp.logical_not(kept).astype(jnp.float32)),
        "router_entropy": jnp.mean(-jnp.sum(probs * jnp.log(jnp.clip(probs, 1e-30)), axis=-1)),
    }
