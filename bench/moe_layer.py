"""Forward+backward time of one MoE layer ÷ the dense SwiGLU FFN with the same active parameters.

    python bench/moe_layer.py [--json] [--tokens 8192] [--d-model 256] [--experts 1 2 4 8 16 32]
                              [--dispatch capacity dropless onehot] [--reps 7]

Both layers run on the same tokens [T, D]; the MoE time includes the router (f32), its losses, the
capacity bookkeeping, scatter and gather (CF 1.0, top-1, the training path). Dense and MoE steps are
timed alternately in the same loop and the ratio of their medians is printed, which stays meaningful
on a shared, noisy CPU. Target (issue 3): capacity at E = 8 ≤ 1.3×.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.model.config import model_config
from moe_jax.model.ffn import FFN
from moe_jax.model.moe import MoE


def step_fn(module, with_stats: bool):
    """jit(grad) of a scalar readout of the layer w.r.t. its parameters and its input."""
    graphdef, state = nnx.split(module)

    def loss(state, x, probe):
        out = nnx.merge(graphdef, state)(x)
        y, stats = out if with_stats else (out, None)
        total = jnp.sum(y * probe)
        if stats is not None:
            total = total + 0.01 * stats["load_balance_loss"] + 0.001 * stats["z_loss"]
        return total

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda x, probe: grad(state, x, probe)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def measure(tokens: int, d_model: int, experts: int, dispatch: str, reps: int) -> float:
    """Median MoE step time ÷ median dense step time, measured alternately."""
    cfg = model_config(d_model=d_model, ffn_hidden=3 * d_model, experts=experts, dispatch=dispatch)
    rngs = nnx.Rngs(0)
    dense, moe = step_fn(FFN(cfg, rngs), False), step_fn(MoE(cfg, rngs), True)
    x = jax.random.normal(jax.random.key(1), (1, tokens, d_model))  # [B=1, S=T, D]
    probe = jax.random.normal(jax.random.key(2), (1, tokens, d_model))
    timed(dense, x, probe), timed(moe, x, probe)  # compile
    dense_t, moe_t = [], []
    for _ in range(reps):
        dense_t.append(timed(dense, x, probe))
        moe_t.append(timed(moe, x, probe))
    return statistics.median(moe_t) / statistics.median(dense_t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list of {experts, dispatch, ratio}")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per call T (default 8192)")
    parser.add_argument("--d-model", type=int, default=256, help="model width D; FFN hidden 3·D (default 256)")
    parser.add_argument("--experts", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--dispatch", nargs="+", default=["capacity", "dropless", "onehot"],
                        choices=["capacity", "dropless", "onehot"])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per layer (default 7)")
    args = parser.parse_args(argv)
    rows = []
    for dispatch in args.dispatch:
        for experts in args.experts:
            ratio = measure(args.tokens, args.d_model, experts, dispatch, args.reps)
            rows.append({"experts": experts, "dispatch": dispatch, "ratio": round(ratio, 3)})
            if not args.json:
                print(f"{dispatch:<9} E={experts:<3} MoE/dense fwd+bwd = {ratio:.3f}", flush=True)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
