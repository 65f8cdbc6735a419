"""Parameter counts read from the built parameter tree (abstractly, via `nnx.eval_shape`)."""

from __future__ import annotations

import math

from flax import nnx

from moe_jax.model.transformer import build_model
from moe_jax.scaling.counting import ModelShape


def param_shapes(model_cfg) -> dict[tuple, tuple[tuple[int, ...], tuple[str, ...]]]:
    """path -> (shape, logical axes) of every parameter of the model `model_cfg` builds; nothing is allocated."""
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    return {tuple(str(p) for p in path): (tuple(leaf.shape), tuple(leaf.get_metadata()["logical_axes"]))
            for path, leaf in nnx.to_flat_state(state)}


def count_params(model_cfg) -> dict[str, int]:
    """n_act, n_total, n_embedding (input table + head), n_router, n_norm from the built tree.

    n_act/n_total include embedding, head and norms and exclude the router (the law's N, SPEC §3);
    n_act counts top_k of the E experts of each MoE layer.
    """
    counts = dict(n_act=0, n_total=0, n_embedding=0, n_router=0, n_norm=0)
    active = min(model_cfg.top_k, model_cfg.experts) / model_cfg.experts
    for path, (shape, axes) in param_shapes(model_cfg).items():
        size = math.prod(shape)
        if "router" in path:
            counts["n_router"] += size
            continue
        if path[0] in ("embed", "head"):
            counts["n_embedding"] += size
        if any(p.endswith("norm") for p in path):
            counts["n_norm"] += size
        counts["n_total"] += size
        is_expert = "ffn" in path and "exp" in axes  # MoE expert weights [L, E, ., .]
        counts["n_act"] += round(size * active) if is_expert else size
    return counts


def model_shape(model_cfg) -> ModelShape:
    """The `ModelShape` (closed-form counting) of a model section."""
    return ModelShape(
        d_model=model_cfg.d_model, n_layers=model_cfg.n_layers, n_heads=model_cfg.n_heads,
        head_dim=model_cfg.head_dim, ffn_hidden=model_cfg.ffn_hidden, experts=model_cfg.experts,
        top_k=model_cfg.top_k, vocab=model_cfg.vocab_size, norm=model_cfg.norm, final_norm=model_cfg.final_norm,
    )
