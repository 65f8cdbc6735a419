"""Train-step benchmark on this machine, ratios measured within one run.

    python bench/train_step.py [--json] [--config configs/tiny.py] [--batch 16] [--repeats 20]

1. E = 8 (capacity dispatch) train-step time ÷ dense train-step time at equal active params
   (target ≤ 1.25 on CPU).
2. MFU of the dense model: matmul FLOPs/s ÷ the dense-matmul peak measured in this run (target ≥ 35 %).
Steps of the two models are timed interleaved (median of `repeats`), so CPU contention affects both.
Where the time goes: forward-only time, the compiled step's FLOPs (XLA cost analysis) and the share of
the step outside the forward+backward (optimizer update).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_jax.configlib import load_config  # noqa: E402
from moe_jax.model import build_model, model_shape  # noqa: E402
from moe_jax.train.mfu import matmul_flops_per_token, measure_matmul_peak  # noqa: E402
from moe_jax.train.optimizer import make_optimizer  # noqa: E402
from moe_jax.train.steps import _forward_loss, init_train_state, make_train_step  # noqa: E402


def _setup(config, experts: int, batch: int):
    cfg = config.model.copy_and_resolve_references()
    cfg.experts, cfg.dispatch = experts, "capacity"
    seq = config.data.seq_len
    opt = make_optimizer(config.train)
    graphdef, rest, state = init_train_state(build_model, cfg, 0, opt)
    step = make_train_step(graphdef, rest, opt)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq + 1), dtype=np.int32)
    data = {"inputs": jax.numpy.asarray(tokens[:, :-1]), "targets": jax.numpy.asarray(tokens[:, 1:]),
            "weights": jax.numpy.ones((batch, seq), jax.numpy.float32)}
    lr = np.float32(1e-3)
    fwd = jax.jit(lambda p, b: _forward_loss(p, graphdef, rest, b, True)[0])
    compiled = step.lower(state, data, lr).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    jax.block_until_ready(step(state, data, lr))  # warm up
    jax.block_until_ready(fwd(state["params"], data))
    return dict(cfg=cfg, step=lambda: step(state, data, lr), fwd=lambda: fwd(state["params"], data),
                tokens=batch * seq, hlo_flops=float((cost or {}).get("flops", float("nan"))))


def _head_ce_grad(tokens: int, d_model: int, vocab: int):
    """fwd+bwd of the output head and the softmax cross-entropy alone, [T, D] @ [D, V] (the logits-bound part)."""
    rng = np.random.default_rng(1)
    x = jax.numpy.asarray(rng.normal(size=(tokens, d_model)).astype(np.float32))
    w = jax.numpy.asarray(0.02 * rng.normal(size=(d_model, vocab)).astype(np.float32))
    t = jax.numpy.asarray(rng.integers(0, vocab, tokens, dtype=np.int32))
    loss = lambda x, w: optax.softmax_cross_entropy_with_integer_labels(x @ w, t).mean()  # noqa: E731
    f = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(f(x, w))
    return lambda: f(x, w)


def _time(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "tiny.py"))
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default %(default)s)")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.config, [])
    seq = config.data.seq_len
    dense, moe = _setup(config, 1, args.batch), _setup(config, args.experts, args.batch)
    head = _head_ce_grad(args.batch * seq, dense["cfg"].d_model, dense["cfg"].vocab_size)
    times = {k: [] for k in ("dense", "moe", "dense_fwd", "moe_fwd", "head_ce_grad")}
    peaks = []
    for _ in range(args.repeats):  # interleaved so contention hits both models alike
        times["dense"].append(_time(dense["step"]))
        times["moe"].append(_time(moe["step"]))
        times["dense_fwd"].append(_time(dense["fwd"]))
        times["moe_fwd"].append(_time(moe["fwd"]))
        times["head_ce_grad"].append(_time(head))
        peaks.append(measure_matmul_peak(config.model.compute_dtype, repeats=1))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    peak = statistics.median(peaks)  # measured under the same contention as the median step times
    flops_tok = matmul_flops_per_token(model_shape(dense["cfg"]), seq)
    dense_tps = dense["tokens"] / med["dense"]
    result = {
        "config": args.config, "batch": args.batch, "seq_len": seq, "experts": args.experts,
        "dense_step_ms": 1e3 * med["dense"], "moe_step_ms": 1e3 * med["moe"],
        "moe_over_dense": med["moe"] / med["dense"], "target_moe_over_dense": 1.25,
        "dense_tokens_per_s": dense_tps, "matmul_peak_gflops": peak / 1e9,
        "dense_mfu": flops_tok * dense_tps / peak, "target_mfu": 0.35,
        "best_matmul_peak_gflops": max(peaks) / 1e9, "dense_mfu_vs_best_peak": flops_tok * dense_tps / max(peaks),
        "head_ce_grad_ms": 1e3 * med["head_ce_grad"],
        "dense_fwd_ms": 1e3 * med["dense_fwd"], "moe_fwd_ms": 1e3 * med["moe_fwd"],
        "dense_hlo_gflops_per_step": dense["hlo_flops"] / 1e9, "moe_hlo_gflops_per_step": moe["hlo_flops"] / 1e9,
        "model_gflops_per_step": flops_tok * dense["tokens"] / 1e9,
        "devices": jax.device_count(), "backend": jax.default_backend(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    r = result
    print(f"train step, {args.batch}×{seq} tokens, {r['backend']} ({r['devices']} device(s); timings interleaved):")
    print(f"  dense {r['dense_step_ms']:.1f} ms, E={args.experts} capacity {r['moe_step_ms']:.1f} ms → "
          f"ratio {r['moe_over_dense']:.3f} (target ≤ 1.25)")
    print(f"  dense MFU {100 * r['dense_mfu']:.1f} % of the median measured {r['matmul_peak_gflops']:.1f} GFLOP/s matmul "
          f"peak (target ≥ 35 %; {100 * r['dense_mfu_vs_best_peak']:.1f} % of the best, "
          f"{r['best_matmul_peak_gflops']:.1f}); {r['dense_tokens_per_s']:,.0f} tokens/s")
    print(f"  where time goes: forward dense {r['dense_fwd_ms']:.1f} ms / MoE {r['moe_fwd_ms']:.1f} ms; compiled step "
          f"FLOPs dense {r['dense_hlo_gflops_per_step']:.2f} G / MoE {r['moe_hlo_gflops_per_step']:.2f} G vs model "
          f"{r['model_gflops_per_step']:.2f} G; output head + cross-entropy fwd+bwd alone {r['head_ce_grad_ms']:.1f} ms "
          f"({100 * r['head_ce_grad_ms'] / r['dense_step_ms']:.0f} % of the dense step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
