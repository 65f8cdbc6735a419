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
    times = {k: [] for k in ("dense", "moe", "dense_fwd", "moe_fwd", "peak")}
    peaks = []
    for _ in range(args.repeats):  # interleaved so contention hits both models alike
        times["dense"].append(_time(dense["step"]))
        times["moe"].append(_time(moe["step"]))
        times["dense_fwd"].append(_time(dense["fwd"]))
        times["moe_fwd"].append(_time(moe["fwd"]))
        peaks.append(measure_matmul_peak(config.model.compute_dtype, repeats=1))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    peak = max(peaks)
    flops_tok = matmul_flops_per_token(model_shape(dense["cfg"]), seq)
    dense_tps = dense["tokens"] / med["dense"]
    result = {
        "config": args.config, "batch": args.batch, "seq_len": seq, "experts": args.experts,
        "dense_step_ms": 1e3 * med["dense"], "moe_step_ms": 1e3 * med["moe"],
        "moe_over_dense": med["moe"] / med["dense"], "target_moe_over_dense": 1.25,
        "dense_tokens_per_s": dense_tps, "matmul_peak_gflops": peak / 1e9,
        "dense_mfu": flops_tok * dense_tps / peak, "target_mfu": 0.35,
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
    print(f"  dense MFU {100 * r['dense_mfu']:.1f} % of the measured {r['matmul_peak_gflops']:.1f} GFLOP/s matmul peak "
          f"(target ≥ 35 %); {r['dense_tokens_per_s']:,.0f} tokens/s")
    print(f"  where time goes: forward dense {r['dense_fwd_ms']:.1f} ms / MoE {r['moe_fwd_ms']:.1f} ms; compiled step "
          f"FLOPs dense {r['dense_hlo_gflops_per_step']:.2f} G / MoE {r['moe_hlo_gflops_per_step']:.2f} G vs model "
          f"{r['model_gflops_per_step']:.2f} G")
    return 0


if __name__ == "__main__":
    sys.exit(main())
