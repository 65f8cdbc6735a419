"""`moe-jax model-info`: parameter and FLOP counts of a config's model, read from the built tree."""

from __future__ import annotations

import argparse
import json

from moe_jax.scaling.counting import attention_flops_per_token, format_count


_COUNTS = ("n_act", "n_total", "n_embedding", "n_router", "n_norm", "flops_per_token", "flops_per_token_with_attention")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file, e.g. configs/paper.py:d512_E8 or configs/tiny.py")
    parser.add_argument("--seq-len", type=int, default=512,
                        help="context for attention FLOPs when the config has no data.seq_len (default 512)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def model_info(config, seq_len: int) -> dict:
    """The model-info record of a loaded config (model section validated, counted via eval_shape)."""
    from moe_jax.kernels import resolve_dispatch
    from moe_jax.model import count_params, validate_model_config

    m = config.model
    validate_model_config(m)
    if "data" in config and "seq_len" in config.data:
        seq_len = int(config.data.seq_len)
    counts = count_params(m)
    six_n = 6.0 * counts["n_act"]
    return {
        "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads, "head_dim": m.head_dim,
        "ffn_hidden": m.ffn_hidden, "experts": m.experts, "top_k": m.top_k, "vocab": m.vocab_size,
        "dispatch": resolve_dispatch(m.dispatch),  # `auto` resolved for the backend this runs on
        **counts,
        "seq_len": seq_len,
        "flops_per_token": six_n,
        "flops_per_token_with_attention": six_n + attention_flops_per_token(m.n_layers, m.n_heads, m.head_dim, seq_len),
    }


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from moe_jax.configlib import load_config
    from moe_jax.errors import UserError

    if args.seq_len < 1:
        raise UserError(f"--seq-len must be a positive integer, got {args.seq_len}")
    config = load_config(args.config, extra)
    if "model" not in config:
        raise UserError(f"config {args.config!r} has no model section")
    info = model_info(config, args.seq_len)
    if args.json:
        print(json.dumps(info))
        return 0
    for key, value in info.items():
        pretty = f"  ({format_count(value)})" if key in _COUNTS and value else ""
        print(f"{key:<31} {value:.6g}{pretty}" if isinstance(value, float) else f"{key:<31} {value}{pretty}")
    return 0
