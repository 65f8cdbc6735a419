"""The decoder-only LM (SPEC §5): embedding, pre-norm blocks, optional final norm, untied head."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from moe_jax.model.attention import Attention
from moe_jax.model.config import validate_model_config
from moe_jax.model.ffn import FFN
from moe_jax.model.init import DTYPES, ParamKeys, truncated_param
from moe_jax.model.moe import MoE
from moe_jax.model.norms import Norm

class Block(nnx.Module):
    """h + Attn(Norm(h)), then h + FFN/MoE(Norm(h))."""

    def __init__(self, cfg, keys: ParamKeys):
        self.attn_norm = Norm(cfg)
        self.attn = Attention(cfg, keys)
        self.ffn_norm = Norm(cfg)
        self.is_moe = cfg.experts > 1
        self.ffn = MoE(cfg, keys) if self.is_moe else FFN(cfg, keys)

    def __call__(self, x, train: bool):
        """x [B, S, D] -> (x [B, S, D], router stats or None)."""
        x = x + self.attn(self.attn_norm(x))
        if self.is_moe:
            y, stats = self.ffn(self.ffn_norm(x), train=train)
        else:
            y, stats = self.ffn(self.ffn_norm(x)), None
        return x + y, stats


class Transformer(nnx.Module):
    """tokens [B, S] int32 -> (logits [B, S, V] f32, aux dict); see `moe_jax.model` for aux."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        validate_model_config(cfg)
        # Only hashable scalars as static attributes (the graphdef must hash for nnx.jit).
        self.experts, self.n_layers = cfg.experts, cfg.n_layers
        self.lb_weight, self.z_weight = float(cfg.load_balance_weight), float(cfg.z_loss_weight)
        keys = ParamKeys(rngs)
        self.embed = truncated_param(keys, (cfg.vocab_size, cfg.d_model), 1, cfg, ("vocab", "embed"))
        self.blocks = nnx.List([Block(cfg, keys) for _ in range(cfg.n_layers)])
        self.final_norm = Norm(cfg) if cfg.final_norm else None
        self.head = truncated_param(keys, (cfg.d_model, cfg.vocab_size), cfg.d_model, cfg, ("embed", "vocab"))
        self.dtype = DTYPES[cfg.compute_dtype]

    def __call__(self, tokens, train: bool = True):
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)  # [B, S, D]
        stats = []
        for block in self.blocks:
            x, s = block(x, train)
            stats.append(s)
        if self.final_norm is not None:
            x = self.final_norm(x)
        b, s, d = x.shape
        logits = jnp.matmul(x.reshape(b * s, d), self.head[...].astype(self.dtype),
                            preferred_element_type=jnp.float32).reshape(b, s, -1)  # [B, S, V], 2-D matmul
        return logits, self._aux(stats)

    def _aux(self, stats) -> dict:
        """Sum the router losses over layers, stack per-layer metrics."""
        if self.experts == 1:
            zero = jnp.zeros((), jnp.float32)
            return {"aux_loss": zero, "load_balance_loss": zero, "z_loss": zero, "dropped_fraction": zero,
                    "expert_load": jnp.ones((self.n_layers, 1), jnp.float32), "router_entropy": zero}
        lb = sum(s["load_balance_loss"] for s in stats)
        z = sum(s["z_loss"] for s in stats)
        return {
            "aux_loss": self.lb_weight * lb + self.z_weight * z,
            "load_balance_loss": lb,
            "z_loss": z,
            "dropped_fraction": jnp.mean(jnp.stack([s["dropped_fraction"] for s in stats])),
            "expert_load": jnp.stack([s["expert_load"] for s in stats]),  # [L, E]
            "router_entropy": jnp.mean(jnp.stack([s["router_entropy"] for s in stats])),
        }


def build_model(model_cfg, rngs: nnx.Rngs) -> Transformer:
    """Validate the model section and build the LM."""
    return Transformer(model_cfg, rngs)
