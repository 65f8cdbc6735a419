"""Mesh benchmark on simulated CPU devices, ratios measured within one run.

    python bench/mesh.py [--json] [--parts abcd]

(a) compile time of the 36-layer d2304_E8 train step ÷ the same model with 4 layers (target ≤ 1.5: the
    layers are scanned, so the program does not grow with depth);
(b) per-device bytes of parameters + optimizer state of d1024_E32 on a 64-device mesh (fsdp=16 × expert=4)
    ÷ (total bytes ÷ 64) (target ≤ 1.10);
(c) tokens/s of configs/tiny.py on the 8-device mesh data=2 × expert=4 ÷ on one device (target ≥ 0.5;
    the 8 simulated devices share this machine's cores);
(d) share of the 8-device step's device time spent in all-to-all, from a jax.profiler trace.
The process simulates 64 CPU devices; (a) uses one of them, (c) and (d) eight.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=64"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_jax.configlib import load_config  # noqa: E402
from moe_jax.parallel.aot import abstract_train_inputs, compile_train_step, per_device_bytes  # noqa: E402
from moe_jax.parallel.mesh import build_mesh, mesh_config, resolve_token_groups  # noqa: E402

EP_MESH = dict(data=2, expert=4)


def compile_ratio() -> dict:
    """(a) AOT compile seconds of d2304_E8 with 36 vs 4 layers on one device (batch 8 × 512)."""
    times = {}
    for layers in (4, 4, 36):  # the first compile also pays one-time start-up costs: discarded
        config = load_config(f"{ROOT}/configs/paper.py:d2304_E8", [f"--config.model.n_layers={layers}",
                                                                  "--config.train.batch_size=8"])
        times[layers] = compile_train_step(config, {"data": 1}, jax.devices()[:1])["compile_s"]
    return {"compile_s_4_layers": times[4], "compile_s_36_layers": times[36], "a_compile_ratio": times[36] / times[4]}


def memory_ratio() -> dict:
    """(b) per-device parameter + optimizer bytes of d1024_E32 on fsdp=16 × expert=4 vs a perfect 1/64 split."""
    config = load_config(f"{ROOT}/configs/paper.py:d1024_E32")
    mesh = build_mesh(mesh_config(data=1, fsdp=16, expert=4), jax.devices()[:64])
    _, state, _ = abstract_train_inputs(config, mesh)
    per_device = per_device_bytes(state["params"]) + per_device_bytes(state["opt_state"])
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((state["params"], state["opt_state"])))
    return {"state_bytes_total": total, "state_bytes_per_device": per_device, "b_memory_ratio": per_device / (total / 64)}


def _tiny_step(devices, mesh_sizes):
    """A zero-argument function running one train step of configs/tiny.py on `devices`, and its tokens."""
    from moe_jax.model import build_model
    from moe_jax.parallel.rules import batch_sharding, state_shardings
    from moe_jax.train.optimizer import make_optimizer
    from moe_jax.train.steps import init_train_state, make_train_step

    config = load_config(f"{ROOT}/configs/tiny.py")
    mesh = build_mesh(mesh_config(**mesh_sizes), devices)
    model_cfg = resolve_token_groups(config.model, dict(mesh.shape))
    opt = make_optimizer(config.train)
    graphdef, rest, state = init_train_state(build_model, model_cfg, 0, opt, mesh=mesh)
    step = make_train_step(graphdef, rest, opt, mesh=mesh, state_sharding=state_shardings(state, mesh), donate=True)
    b, s = config.train.batch_size, config.data.seq_len
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, (b, s + 1)).astype(np.int32)
    batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, s), np.float32)},
                           batch_sharding(mesh))
    holder = {"state": state}

    def run():
        holder["state"], out = step(holder["state"], batch, np.float32(1e-3))
        return out

    jax.block_until_ready(run())  # compile
    return run, b * s


def _median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput_ratio(repeats: int) -> dict:
    """(c) tokens/s on 8 simulated devices (data=2 × expert=4) ÷ one device, steps timed interleaved."""
    one, tokens = _tiny_step(jax.devices()[:1], dict(data=1))
    eight, _ = _tiny_step(jax.devices()[:8], EP_MESH)
    t1, t8 = [], []
    for _ in range(repeats):
        t1.append(_median_seconds(one, 1))
        t8.append(_median_seconds(eight, 1))
    tps1, tps8 = tokens / statistics.median(t1), tokens / statistics.median(t8)
    return {"tokens_per_s_1_device": tps1, "tokens_per_s_8_devices": tps8, "c_throughput_ratio": tps8 / tps1}


def all_to_all_share(repeats: int) -> dict:
    """(d) Σ all-to-all op time over the 8 devices ÷ (8 × wall time) of `repeats` profiled steps."""
    run, _ = _tiny_step(jax.devices()[:8], EP_MESH)
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir, create_perfetto_trace=True)
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = run()
        jax.block_until_ready(out)
        wall = time.perf_counter() - t0
        jax.profiler.stop_trace()
        trace = json.load(gzip.open(next(Path(logdir).rglob("perfetto_trace.json.gz"))))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    a2a_us = sum(e.get("dur", 0) for e in events if e.get("ph") == "X" and e.get("name", "").startswith("all-to-all"))
    return {"all_to_all_s_per_device_step": a2a_us / 1e6 / 8 / repeats, "step_s": wall / repeats,
            "d_all_to_all_share": a2a_us / 1e6 / (8 * wall)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="abcd", help="which ratios to measure (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {}
    parts = {"a": compile_ratio, "b": memory_ratio, "c": lambda: throughput_ratio(args.repeats),
             "d": lambda: all_to_all_share(args.repeats)}
    for part in args.parts:
        result.update(parts[part]())
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        print(f"{key:<32} {value:.4g}" if isinstance(value, float) else f"{key:<32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
