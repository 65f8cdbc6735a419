"""`moe-jax model-info`: parameter and FLOP counts of a config's model, read from the built tree.

With --compile --mesh fsdp=16,expert=4 it also compiles the train step ahead of time for that mesh
(simulated CPU devices; the command re-runs itself with XLA_FLAGS when it needs more devices) and
reports per-device bytes of parameters, optimizer state and temporaries, and the compile time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

from moe_jax.scaling.counting import attention_flops_per_token, format_count


_COUNTS = ("n_act", "n_total", "n_embedding", "n_router", "n_norm", "flops_per_token", "flops_per_token_with_attention")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file, e.g. configs/paper.py:d512_E8 or configs/tiny.py")
    parser.add_argument("--seq-len", type=int, default=512,
                        help="context for attention FLOPs when the config has no data.seq_len (default 512)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--mesh", default="", help="mesh for --compile, e.g. fsdp=16,expert=4 (axes not named are 1)")
    parser.add_argument("--compile", action="store_true",
                        help="AOT-compile the train step on --mesh (simulated CPU devices): per-device memory, compile time")


def parse_mesh(text: str) -> dict[str, int]:
    """'fsdp=16,expert=4' -> {'fsdp': 16, 'expert': 4}; UserError naming the bad part."""
    from moe_jax.errors import UserError
    from moe_jax.parallel.mesh import AXES

    sizes = {}
    for part in filter(None, text.split(",")):
        axis, _, value = part.partition("=")
        if axis not in AXES or not value.isdigit() or int(value) < 1:
            raise UserError(f"--mesh part {part!r} is invalid; use AXIS=SIZE with AXIS in {', '.join(AXES)} and SIZE >= 1")
        sizes[axis] = int(value)
    if not sizes:
        raise UserError("--compile needs --mesh, e.g. --mesh fsdp=16,expert=4 (or --mesh data=1 for one device)")
    return sizes


def compile_report(args, extra: list[str], config) -> dict:
    """The AOT compile report on a mesh of prod(sizes) devices; re-runs this command with that many CPU devices."""
    import jax

    from moe_jax.errors import UserError

    sizes = parse_mesh(args.mesh)
    devices = math.prod(sizes.values())
    if jax.device_count() == devices:
        from moe_jax.parallel.aot import compile_train_step

        return compile_train_step(config, sizes)
    if os.environ.get("MOE_JAX_AOT_CHILD"):
        raise UserError(f"--mesh {args.mesh} needs {devices} devices, found {jax.device_count()}")
    env = dict(os.environ, MOE_JAX_AOT_CHILD="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip())
    cmd = [sys.executable, "-m", "moe_jax.cli", "model-info", "--config", args.config, "--mesh", args.mesh,
           "--compile", "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise UserError(lines[-1].split("error: ", 1)[-1] if lines else f"compiling on {devices} devices failed")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: report[k] for k in ("devices", "mesh", "batch_size", "per_device_bytes", "compile_s")}


def kernel_choices(m, tokens: int) -> dict:
    """How the MoE layers of model section `m` run on this host at `tokens` tokens per call: the
    dispatch (`auto` resolved), the ragged_dot lowering (`auto` measured on GPU, cached) and, for
    `pallas`, the tiles tm×tk×tn of each grouped kernel."""
    from moe_jax.kernels import resolve_dispatch
    from moe_jax.kernels.tiling import layer_tilings
    from moe_jax.model.config import DTYPES

    choice = {"dispatch": resolve_dispatch(m.dispatch), "ragged_dot_triton": False}
    if choice["dispatch"] == "dropless":
        from moe_jax.kernels.triton_choice import LayerShape, resolve_triton

        shape = LayerShape(tokens, m.d_model, m.ffn_hidden, m.experts, m.top_k, m.compute_dtype)
        choice["ragged_dot_triton"] = resolve_triton(m.ragged_dot_triton, shape)
    if choice["dispatch"] == "pallas":
        rows = tokens * m.top_k
        tilings = layer_tilings(rows, m.d_model, m.ffn_hidden, (m.tile_m, m.tile_k, m.tile_n),
                                DTYPES[m.compute_dtype].itemsize)
        choice["tiles"] = ", ".join(f"{name} {t.tm}x{t.tk}x{t.tn}" for name, t in tilings.items()) + (
            f" (tm x tk x tn at T·K = {rows} rows)")
    return choice


def layer_tokens(config, seq_len: int) -> int:
    """Tokens per MoE call: train.batch_size sequences of seq_len (one sequence without a train section)."""
    if "train" in config and "batch_size" in config.train:
        return int(config.train.batch_size) * seq_len
    return seq_len


def model_info(config, seq_len: int) -> dict:
    """The model-info record of a loaded config (model section validated, counted via eval_shape)."""
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
        **kernel_choices(m, layer_tokens(config, seq_len)),  # `auto` resolved for the backend this runs on
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
    if args.compile:
        if "train" not in config or "data" not in config:
            raise UserError(f"--compile needs a training config (model, data and train sections); {args.config!r} has none")
        info.update(compile_report(args, extra, config))
    elif args.mesh:
        raise UserError("--mesh is used with --compile")
    if args.json:
        print(json.dumps(info))
        return 0
    for key, value in info.items():
        if key == "per_device_bytes":
            for part, size in value.items():
                print(f"{'per_device_bytes.' + part:<31} {size}  ({size / 2**30:.3f} GiB)")
            continue
        pretty = f"  ({format_count(value)})" if key in _COUNTS and value else ""
        print(f"{key:<31} {value:.6g}{pretty}" if isinstance(value, float) else f"{key:<31} {value}{pretty}")
    return 0
