"""Accelerator check of the MoE kernels: correctness at paper sizes, timings, and a train step's MFU.

    python bench/accelerator.py [--quick]

Needs only jax (0.10/0.11 with CUDA or TPU), flax, optax and numpy, plus this repository on the
path (run it from the repository root, or `PYTHONPATH=/path/to/repo`): no TensorFlow, seqio or
ml_collections is imported, and no network is used. Prints one JSON object; ≤ 5 minutes.

- correctness (bf16, T = 65,536, D = 1024, F = 3072, E = 8 and 32, top-1): our gmm, gmm through
  a row index (fused), tgmm and the `pallas` MoE layer against jax.lax.ragged_dot / `dropless`.
  Off TPU the Pallas kernels run in interpret mode, so GPU checks them at T = 4096 and CPU at tiny
  sizes ("no accelerator": the correctness part only, exit 0).
- timings (ms, one grouped matmul [T, D] x [E, D, F] from tokens in token order): ragged_dot on the
  permuted copy (GPU: also with the Pallas-Triton lowering, or the error that lowering raised), the
  capacity path's batched einsum
  [E, C, D] x [E, D, F] (its gather not included), and on TPU our gmm fused (rows read through the
  index) and unfused (permuted copy + gmm) and JAX's megablox gmm (permuted copy + gmm).
- ragged_dot_triton_auto (GPU): the verdict of `model.ragged_dot_triton=auto` at the train step's
  layer shape: the dropless layer's forward + backward timed with and without the lowering (cached
  in ~/.cache/moe_jax/ragged_dot_triton.json; the train step below reuses it).
- mfu: a d512_E8 train step (bf16, dispatch=auto, 128 x 512 tokens) ÷ the measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from moe_jax.kernels import TRITON_FLAG, get_dispatch, ragged_dot_triton, resolve_dispatch  # noqa: E402
from moe_jax.kernels.fused import expert_order, pallas_moe  # noqa: E402
from moe_jax.kernels.gmm import gmm, tgmm  # noqa: E402
from moe_jax.kernels.triton_choice import LayerShape, cached_verdict  # noqa: E402

FORBIDDEN = ("tensorflow", "seqio", "ml_collections", "tensorflow_datasets")
PAPER = {"tokens": 65536, "d_model": 1024, "ffn": 3072}
SIZES = {"tpu": PAPER, "gpu": {**PAPER, "tokens": 4096}, "cpu": {"tokens": 96, "d_model": 128, "ffn": 256}}
TRAIN_BATCH, TRAIN_SEQ = 128, 512  # the d512_E8 train step


def inputs(tokens, d_model, ffn, experts, seed=0):
    """bf16 x [T, D], W_gate/W_up [E, D, F], W_down [E, F, D]; skewed top-1 routing with an empty expert."""
    keys = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(keys[0], (tokens, d_model), jnp.bfloat16)
    w = [jax.random.normal(k, s, jnp.bfloat16) / np.sqrt(s[1]) for k, s in
         zip(keys[1:4], [(experts, d_model, ffn)] * 2 + [(experts, ffn, d_model)])]
    logits = jax.random.normal(keys[4], (tokens, experts)) + jnp.linspace(0.0, 2.0, experts)
    idx = jnp.argmax(logits.at[:, 0].set(-1e9), axis=1)[:, None].astype(jnp.int32)  # expert 0 empty
    gates = jax.nn.softmax(logits, axis=1)[jnp.arange(tokens)[:, None], idx]
    return x, idx, gates, *w


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def check(tokens, d_model, ffn, experts, interpret) -> dict:
    """Max |ours - reference| / max |reference| of each kernel on bf16 inputs (tolerance 2e-2);
    the references run in f32 on the same (bf16-valued) inputs."""
    x, idx, gates, wg, wu, wd = inputs(tokens, d_model, ffn, experts)
    rows, _, inverse, sizes = expert_order(idx, experts)
    xs = jnp.take(x, rows, axis=0)
    grad = jax.random.normal(jax.random.key(1), (tokens, ffn), jnp.bfloat16)  # [T·K, F], top-1
    f32 = lambda *a: [v.astype(jnp.float32) for v in a]  # noqa: E731
    ragged = jax.jit(lambda a, b: jax.lax.ragged_dot(a, b, sizes))
    errs = {
        "gmm": rel_err(jax.jit(lambda a, b: gmm(a, b, sizes, interpret=interpret))(xs, wg), ragged(*f32(xs, wg))),
        "gmm_fused_rows": rel_err(jax.jit(lambda a, b: gmm(a, b, sizes, rows, inverse, interpret=interpret))(x, wg),
                                  ragged(*f32(xs, wg))),
        "tgmm": rel_err(jax.jit(lambda a, g: tgmm(a, g, sizes, interpret=interpret))(xs, grad),
                        jax.vjp(lambda w: ragged(f32(xs)[0], w), f32(wg)[0])[1](f32(grad)[0])[0]),
        "pallas_moe_vs_dropless": rel_err(
            jax.jit(lambda *a: pallas_moe(*a, interpret=interpret)[0])(x, idx, gates, wg, wu, wd),
            jax.jit(lambda *a: get_dispatch("dropless")(*a, None)[0])(*f32(x), idx, gates, *f32(wg, wu, wd))),
    }
    return {"tokens": tokens, "experts": experts, "interpret": interpret, "rel_err": errs,
            "ok": all(e <= 2e-2 for e in errs.values())}


def timed_ms(fn, *args, reps: int = 10) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def timings(tokens, d_model, ffn, experts, backend) -> dict:
    """Milliseconds of one grouped matmul [T, D] x [E, D, F] per implementation (and TFLOP/s)."""
    from jax.experimental.pallas.ops.tpu import megablox

    x, idx, _, wg, _, _ = inputs(tokens, d_model, ffn, experts)
    rows, _, inverse, sizes = expert_order(idx, experts)
    c = tokens // experts  # capacity at CF 1, top-1
    buffers = jnp.take(x, jnp.arange(experts * c) % tokens, axis=0).reshape(experts, c, d_model)
    ms = {"ragged_dot": timed_ms(jax.jit(lambda a, b: jax.lax.ragged_dot(jnp.take(a, rows, axis=0), b, sizes)), x, wg),
          "capacity_einsum": timed_ms(jax.jit(lambda a, b: jnp.einsum("ecd,edf->ecf", a, b)), buffers, wg)}
    errors = {}
    if backend == "gpu" and hasattr(jax.config, TRITON_FLAG):
        try:
            with ragged_dot_triton(True):  # the flag is read when lowering: the timed jit call is inside
                ms["ragged_dot_triton"] = timed_ms(
                    jax.jit(lambda a, b: jax.lax.ragged_dot(jnp.take(a, rows, axis=0), b, sizes)), x, wg)
        except Exception as err:  # noqa: BLE001 — JAX 0.10.2 has the flag but not the lowering module
            errors["ragged_dot_triton"] = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    if backend == "tpu":
        ms["gmm_fused"] = timed_ms(jax.jit(lambda a, b: gmm(a, b, sizes, rows, inverse)), x, wg)
        ms["gmm_unfused"] = timed_ms(jax.jit(lambda a, b: gmm(jnp.take(a, rows, axis=0), b, sizes)), x, wg)
        ms["megablox"] = timed_ms(jax.jit(lambda a, b: megablox.gmm(jnp.take(a, rows, axis=0), b, sizes,
                                                                    preferred_element_type=a.dtype)), x, wg)
    flops = 2.0 * tokens * d_model * ffn
    return {"experts": experts, "ms": {k: round(v, 3) for k, v in ms.items()},
            "tflops": {k: round(flops / v / 1e9, 1) for k, v in ms.items()}, **({"errors": errors} if errors else {})}


def triton_verdict() -> dict:
    """`model.ragged_dot_triton=auto` at the train step's layer shape (d512_E8, bf16): measured or cached."""
    shape = LayerShape(TRAIN_BATCH * TRAIN_SEQ, 512, 1536, 8, 1, "bfloat16")
    return {"key": shape.key(), **cached_verdict(shape)}


class Fields(dict):
    """An attribute dict: the model section without ml_collections."""

    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


def train_modules():
    """Import what the train-step measurement needs (also on CPU, to check the import path)."""
    import optax

    from moe_jax.model import build_model
    from moe_jax.model.config import fill_model_defaults
    from moe_jax.scaling.counting import ModelShape
    from moe_jax.train import mfu, steps

    return optax, build_model, fill_model_defaults, ModelShape, mfu, steps


def train_step_mfu(batch: int = TRAIN_BATCH, seq: int = TRAIN_SEQ, steps: int = 5) -> dict:
    """MFU of a d512_E8 train step (bf16, dispatch=auto) against the measured bf16 matmul peak."""
    optax, build_model, fill_model_defaults, ModelShape, mfu, train_steps = train_modules()
    shape = ModelShape.paper(512, 8)
    cfg = fill_model_defaults(Fields(), d_model=512, n_layers=shape.n_layers, n_heads=shape.n_heads,
                              head_dim=shape.head_dim, ffn_hidden=shape.ffn_hidden, experts=8,
                              dispatch="auto", compute_dtype="bfloat16")
    optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.1)
    graphdef, rest, state = train_steps.init_train_state(build_model, cfg, 0, optimizer)
    step = train_steps.make_train_step(graphdef, rest, optimizer)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)
    data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((batch, seq), jnp.float32)}
    state, metrics = step(state, data, 1e-3)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, data, 1e-3)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    achieved = mfu.matmul_flops_per_token(shape, seq) * batch * seq / seconds
    peak = mfu.measure_matmul_peak("bfloat16")
    return {"config": "d512_E8", "dispatch": resolve_dispatch("auto"), "tokens_per_step": batch * seq,
            "step_ms": round(1e3 * seconds, 2), "model_tflops": round(achieved / 1e12, 2),
            "ragged_dot_triton": bool(getattr(jax.config, TRITON_FLAG, False)),  # as the step was lowered
            "measured_peak_tflops": round(peak / 1e12, 1), "mfu": round(achieved / peak, 4),
            "loss": float(metrics["loss"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="E = 8 only (a faster smoke run)")
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    experts = (8,) if args.quick else (8, 32)
    report = {"backend": backend, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "auto_dispatch": resolve_dispatch("auto")}
    if backend == "cpu":
        report["note"] = "no accelerator: interpret-mode correctness check at small sizes only"
        print(report["note"], file=sys.stderr)
    report["correctness"] = [check(**SIZES.get(backend, SIZES["cpu"]), experts=e, interpret=backend != "tpu")
                             for e in experts]
    if backend != "cpu":
        report["timings"] = [timings(**PAPER, experts=e, backend=backend) for e in experts]
        if backend == "gpu":
            report["ragged_dot_triton_auto"] = triton_verdict()
        report["train_step"] = train_step_mfu()
    train_modules()  # the whole import path, also where the train step is not run
    report["forbidden_modules_loaded"] = sorted(m for m in FORBIDDEN if m in sys.modules)
    print(json.dumps(report))
    return 0 if all(c["ok"] for c in report["correctness"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
