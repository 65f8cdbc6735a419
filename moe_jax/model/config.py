"""The `config.model` section: defaults (paper values), the paper's shape rule, validation."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from moe_jax.errors import ConfigError
from moe_jax.kernels import DISPATCH_NAMES, triton_setting
from moe_jax.kernels.tiling import check_tiles
from moe_jax.scaling import constants
from moe_jax.scaling.counting import ModelShape

NORMS = ("layernorm", "rmsnorm")
# model.compute_dtype / model.param_dtype name -> dtype (numpy dtypes, which JAX takes as they are).
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
EXPERT_DOWN_FAN_INS = ("experts", "ffn")
REMATS = ("none", "full", "save_dots")


def model_config(**overrides):
    """Defaults of the model section (SPEC §3, §5: a d512 dense model) as an ml_collections.ConfigDict."""
    import ml_collections  # imported here so that fill_model_defaults works without it

    return fill_model_defaults(ml_collections.ConfigDict(), **overrides)


def fill_model_defaults(cfg, **overrides):
    """Set every model field of `cfg` (any attribute/item container) to its default; `overrides` replace fields."""
    cfg.vocab_size = constants.PAPER_VOCAB  # tokens in the vocabulary (GPT-2 BPE in the paper)
    cfg.d_model = 512  # residual stream width D
    cfg.n_layers = 8  # transformer blocks (paper: d_model / 64)
    cfg.n_heads = 8  # attention heads (paper: d_model / 64)
    cfg.head_dim = 64  # per-head width; attention projects D -> n_heads * head_dim
    cfg.ffn_hidden = 1536  # SwiGLU hidden size F of one expert (paper: 3 * d_model)
    cfg.experts = 1  # E; 1 = dense FFN without router, >1 = MoE in every block
    cfg.top_k = 1  # experts per token (token choice; paper: 1)
    cfg.capacity_factor_train = 1.0  # capacity = int(CF * tokens * k / E) per expert when train=True
    cfg.capacity_factor_eval = 1.5  # the same when train=False (paper evaluates with 1.5)
    cfg.dispatch = "capacity"  # capacity | dropless (ragged_dot) | pallas | megablox (TPU) | onehot | loop | auto
    cfg.tile_m = 0  # Pallas kernels' row tile (multiple of 8); 0 = per-shape default (moe_jax/kernels/tiling.py)
    cfg.tile_k = 0  # contraction tile (divides D and F, multiple of 128); 0 = per-shape default
    cfg.tile_n = 0  # output-column tile (divides D and F, multiple of 128); 0 = per-shape default
    cfg.ragged_dot_triton = "auto"  # GPU, dispatch dropless: lower ragged_dot via Pallas-Triton: true | false |
    # auto (time both once per shape, keep the faster; cached; false off GPU) -- moe_jax/kernels/triton_choice.py
    cfg.norm = "layernorm"  # pre-norm type: layernorm (scale + bias, eps 1e-5) | rmsnorm (scale)
    cfg.final_norm = False  # norm before the output head (the authors' code has none)
    cfg.rope_base = 10000.0  # RoPE base frequency
    cfg.load_balance_weight = 0.01  # weight of the per-layer load-balancing loss
    cfg.z_loss_weight = 0.001  # weight of the per-layer router z-loss
    cfg.init_scale = 0.1  # init std = sqrt(init_scale / fan_in)
    cfg.init_truncation = 0.2  # absolute truncation of the init normal (±value)
    cfg.expert_down_fan_in = "experts"  # fan_in of W_2: 'experts' = E * ffn_hidden (paper) | 'ffn' = ffn_hidden
    cfg.compute_dtype = "float32"  # activation/matmul dtype: float32 | bfloat16 (router and logits stay f32)
    cfg.param_dtype = "float32"  # parameter storage dtype: float32 | bfloat16
    cfg.token_groups = 0  # capacity groups: tokens split into G equal groups of whole sequences, each with its own
    # capacity (the paper: per device over its local tokens); 0 = the devices the batch is split over (1 on one device)
    cfg.scan_layers = True  # apply the stacked blocks with nnx.scan (compile time flat in depth) | a Python loop
    cfg.remat = "none"  # recompute activations in the backward pass: none | full | save_dots (keep matmul outputs)
    for key, value in overrides.items():
        if key not in cfg:
            raise ConfigError(f"unknown model field {key!r}; valid fields: {', '.join(sorted(cfg.keys()))}")
        if key == "ragged_dot_triton" and isinstance(value, bool):
            value = str(value).lower()  # a str field (it may be "auto"): a ConfigDict keeps its type
        cfg[key] = value
    return cfg


def paper_shape(d_model: int, experts: int = 1, n_layers: int | None = None, n_heads: int | None = None,
                **overrides):
    """The paper's shape rule: layers = heads = d/64, head dim d/heads, SwiGLU hidden 3·d."""
    if d_model % constants.PAPER_HEAD_DIM or d_model % (n_heads or 1):
        raise ConfigError(f"paper shape rule needs d_model divisible by 64 and by n_heads, got {d_model}, {n_heads}")
    shape = ModelShape.paper(d_model, experts, n_layers=n_layers, n_heads=n_heads)
    return model_config(
        d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads, head_dim=shape.head_dim,
        ffn_hidden=shape.ffn_hidden, experts=shape.experts, **overrides,
    )


def _choice(cfg, field, valid):
    if cfg[field] not in valid:
        raise ConfigError(f"model.{field} = {cfg[field]!r} is invalid; choose one of {', '.join(valid)}")


def validate_model_config(cfg) -> None:
    """Raise ConfigError naming the first bad field of a model section."""
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "ffn_hidden", "experts", "top_k"):
        value = cfg[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.{field} = {value!r} must be a positive integer")
    if cfg.head_dim % 2:
        raise ConfigError(f"model.head_dim = {cfg.head_dim} must be even (RoPE rotates half of each head)")
    if cfg.top_k > cfg.experts:
        raise ConfigError(f"model.top_k = {cfg.top_k} exceeds model.experts = {cfg.experts}")
    for field in ("capacity_factor_train", "capacity_factor_eval", "rope_base", "init_scale", "init_truncation"):
        if not float(cfg[field]) > 0:
            raise ConfigError(f"model.{field} = {cfg[field]!r} must be > 0")
    for field in ("load_balance_weight", "z_loss_weight"):
        if not float(cfg[field]) >= 0:
            raise ConfigError(f"model.{field} = {cfg[field]!r} must be >= 0")
    _choice(cfg, "dispatch", DISPATCH_NAMES)
    _choice(cfg, "norm", NORMS)
    _choice(cfg, "compute_dtype", DTYPES)
    _choice(cfg, "param_dtype", DTYPES)
    _choice(cfg, "expert_down_fan_in", EXPERT_DOWN_FAN_INS)
    _choice(cfg, "remat", REMATS)
    if isinstance(cfg.token_groups, bool) or not isinstance(cfg.token_groups, int) or cfg.token_groups < 0:
        raise ConfigError(f"model.token_groups = {cfg.token_groups!r} must be an integer >= 0 (0 = one per device)")
    triton_setting(cfg.ragged_dot_triton)
    for field in ("final_norm", "scan_layers"):
        if not isinstance(cfg[field], bool):
            raise ConfigError(f"model.{field} = {cfg[field]!r} must be true or false")
    check_tiles((cfg.tile_m, cfg.tile_k, cfg.tile_n), (cfg.d_model, cfg.ffn_hidden))
