"""Model-FLOPs utilisation: model FLOPs/s ÷ the device's measured dense-matmul peak (cached per machine)."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from moe_jax.user_cache import read_table, write_table

PEAK_ENV = "MOE_JAX_PEAK_FLOPS"  # set to a number (FLOP/s per device) to skip measuring


def _device_key(dtype: str) -> str:
    dev = jax.devices()[0]
    return f"{dev.platform}:{getattr(dev, 'device_kind', '?')}:{os.cpu_count()}cpu:{dtype}"


def measure_matmul_peak(dtype: str = "float32", n: int | None = None, repeats: int = 10) -> float:
    """Best observed FLOP/s of one device on an n×n @ n×n matmul (2n³ FLOPs), compiled and warmed up."""
    n = n or (1024 if jax.default_backend() == "cpu" else 8192)
    a = jnp.ones((n, n), dtype) * 0.5
    b = jnp.ones((n, n), dtype) * 0.25
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def matmul_peak(dtype: str = "float32", remeasure: bool = True) -> float:
    """Per-device peak FLOP/s: $MOE_JAX_PEAK_FLOPS, else the best of the cached and a fresh measurement.

    The cache keeps the best value ever measured on this machine, so one measurement taken while
    other processes share the CPU does not become the peak (which would inflate MFU) for good.
    """
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV])
    key = _device_key(dtype)
    table = read_table("matmul_peak.json")
    cached = float(table[key]) if isinstance(table.get(key), (int, float)) and table[key] > 0 else 0.0
    if cached and not remeasure:
        return cached
    peak = max(cached, measure_matmul_peak(dtype))
    if peak == cached:
        return peak
    table[key] = peak
    write_table("matmul_peak.json", table)  # an unwritable cache only costs a re-measurement next time
    return peak


def matmul_flops_per_token(shape, seq_len: int) -> float:
    """Training FLOPs/token actually spent in matmuls: 6·(N_act − input embedding) + attention scores.

    The input embedding is a gather (no FLOPs), so it is excluded here, unlike the law's 6·N_act.
    """
    counts = shape.counts()
    dense = 6.0 * (counts["n_act"] - counts["n_embedding"] // 2 - counts["n_norm"])
    return dense + shape.flops_per_token(seq_len)["flops_per_token_with_attention"] - 6.0 * counts["n_act"]
