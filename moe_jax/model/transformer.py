"""The decoder-only LM (SPEC §5): embedding, pre-norm blocks, optional final norm, untied head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.model.attention import Attention
from moe_jax.model.config import validate_model_config
from moe_jax.model.ffn import FFN
from moe_jax.model.init import DTYPES, ParamKeys, truncated_param
from moe_jax.model.moe import MoE
from moe_jax.model.norms import Norm
from moe_jax.parallel.rules import constrain, gathered

REMAT_POLICIES = {"full": None, "save_dots": jax.checkpoint_policies.checkpoint_dots}


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
        return constrain(x + y, "batch", None, "embed"), stats


def stacked_blocks(cfg, keys: ParamKeys) -> Block:
    """The n_layers blocks as ONE Block whose parameters have a leading `layers` axis [L, ...].

    Built block by block (the same initial values as separate blocks), then stacked; each parameter's
    logical_axes gain 'layers' in front.
    """
    blocks = [Block(cfg, keys) for _ in range(cfg.n_layers)]
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in blocks])
    for _, variable in nnx.to_flat_state(stacked):
        variable.set_metadata("logical_axes", ("layers", *variable.get_metadata()["logical_axes"]))
    return nnx.merge(graphdef, stacked)


class Transformer(nnx.Module):
    """tokens [B, S] int32 -> (logits [B, S, V] f32, aux dict); see `moe_jax.model` for aux."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        validate_model_config(cfg)
        # Only hashable scalars as static attributes (the graphdef must hash for nnx.jit).
        self.experts, self.n_layers = cfg.experts, cfg.n_layers
        self.lb_weight, self.z_weight = float(cfg.load_balance_weight), float(cfg.z_loss_weight)
        keys = ParamKeys(rngs)
        self.embed = truncated_param(keys, (cfg.vocab_size, cfg.d_model), 1, cfg, ("vocab", "embed"))
        # The eager 'loop' dispatch reference cannot run inside a scan (a trace): it loops over layers.
        self.scan_layers, self.remat = bool(cfg.scan_layers) and cfg.dispatch != "loop", cfg.remat
        self.blocks = stacked_blocks(cfg, keys)  # parameters [L, ...]
        self.final_norm = Norm(cfg) if cfg.final_norm else None
        self.head = truncated_param(keys, (cfg.d_model, cfg.vocab_size), cfg.d_model, cfg, ("embed", "vocab"))
        self.dtype = DTYPES[cfg.compute_dtype]

    def __call__(self, tokens, train: bool = True):
        x = jnp.take(gathered(self.embed), tokens, axis=0).astype(self.dtype)  # [B, S, D]
        x, stats = self._apply_blocks(constrain(x, "batch", None, "embed"), train)
        if self.final_norm is not None:
            x = self.final_norm(x)
        b, s, d = x.shape
        logits = jnp.matmul(x.reshape(b * s, d), gathered(self.head).astype(self.dtype),
                            preferred_element_type=jnp.float32).reshape(b, s, -1)  # [B, S, V], 2-D matmul
        return logits, self._aux(stats)

    def _apply_blocks(self, x, train: bool):
        """x [B, S, D] through the L stacked blocks -> (x, router stats with a leading [L] axis or None)."""

        def body(block, x):
            return block(x, train)

        if self.remat != "none":
            body = nnx.remat(body, policy=REMAT_POLICIES[self.remat])
        if self.scan_layers:
            return nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))(self.blocks, x)
        graphdef, state = nnx.split(self.blocks)
        stats = []
        for i in range(self.n_layers):  # the same stacked parameters, one layer slice at a time
            x, s = body(nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)), x)
            stats.append(s)
        return x, (None if self.experts == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *stats))

    def _aux(self, stats) -> dict:
        """Sum the router losses over layers, average per-layer metrics; stats hold [L] leading axes."""
        if self.experts == 1:
            zero = jnp.zeros((), jnp.float32)
            return {"aux_loss": zero, "load_balance_loss": zero, "z_loss": zero, "dropped_fraction": zero,
                    "expert_load": jnp.ones((self.n_layers, 1), jnp.float32), "router_entropy": zero}
        lb, z = jnp.sum(stats["load_balance_loss"]), jnp.sum(stats["z_loss"])
        return {
            "aux_loss": self.lb_weight * lb + self.z_weight * z,
            "load_balance_loss": lb,
            "z_loss": z,
            "dropped_fraction": jnp.mean(stats["dropped_fraction"]),
            "expert_load": stats["expert_load"],  # [L, E]
            "router_entropy": jnp.mean(stats["router_entropy"]),
        }


def build_model(model_cfg, rngs: nnx.Rngs) -> Transformer:
    """Validate the model section and build the LM."""
    return Transformer(model_cfg, rngs)
