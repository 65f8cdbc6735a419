"""moe_jax.model: the paper's dense/MoE transformer LM in Flax NNX.

    model = build_model(config.model, nnx.Rngs(0))
    logits, aux = model(tokens, train=True)   # tokens [B, S] int32 -> logits [B, S, V] f32

aux: aux_loss (Σ_layers lb_weight·lb + z_weight·z, add to the CE loss), load_balance_loss and z_loss
(unweighted sums over layers), dropped_fraction (mean over layers), expert_load [L, E] (share of
assignments per expert before dropping), router_entropy (mean). E = 1: zeros, expert_load ones [L, 1].
"""

from moe_jax.model.config import model_config, paper_shape, validate_model_config
from moe_jax.model.counting import count_params, model_shape
from moe_jax.model.transformer import build_model

__all__ = ["build_model", "count_params", "model_config", "model_shape", "paper_shape", "validate_model_config"]
