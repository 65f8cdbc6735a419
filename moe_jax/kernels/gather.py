"""Row gathers in Pallas: each output row is a gate-weighted sum of K rows picked by an index array.

    gather_sum(src [R, D], index [T, K] int, weight [T, K]) -> [T, D]
    out[t] = Σ_k weight[t, k] · src[index[t, k]]

It brings the experts' outputs back to token order (index = each assignment's row in expert order,
weight = its gate), and is the backward of a gmm that read its rows through an index: both are
gathers, so no scatter-add is needed anywhere. Rows are copied one DMA each from HBM into VMEM.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from moe_jax.kernels.tiling import KernelPlan, Operand, choose_tiling, vmem_limit


def on_tpu() -> bool:
    return jax.default_backend() == "tpu"


def block_spec(op: Operand, memory_space=None) -> pl.BlockSpec:
    """The pl.BlockSpec of a planned operand (optionally in SMEM)."""
    if memory_space is None:
        return pl.BlockSpec(op.block, op.index_map)
    return pl.BlockSpec(op.block, op.index_map, memory_space=memory_space)


def gather_tile(row_of, src_hbm, buf, sem, col: int | jax.Array):
    """buf[r] = src_hbm[row_of(r), col : col + width] for every row r of buf (one DMA per row)."""
    tm, width = buf.shape

    def copy(r):
        return pltpu.make_async_copy(src_hbm.at[pl.ds(row_of(r), 1), pl.ds(col, width)], buf.at[pl.ds(r, 1)], sem.at[0])

    jax.lax.fori_loop(0, tm, lambda r, c: (copy(r).start(), c)[1], 0)
    jax.lax.fori_loop(0, tm, lambda r, c: (copy(r).wait(), c)[1], 0)
    return buf[...]


def _gather_sum_kernel(index_ref, weight_ref, src_hbm, out_ref, buf, sem, *, k: int):
    acc = jnp.zeros(out_ref.shape, jnp.float32)
    for choice in range(k):  # K is small (top-k)
        rows = gather_tile(lambda r: index_ref[r * k + choice], src_hbm, buf, sem, 0)  # [tt, D]
        acc += weight_ref[:, choice:choice + 1] * rows.astype(jnp.float32)
    out_ref[...] = acc.astype(out_ref.dtype)


def gather_sum_plan(src_shape, index_shape, itemsize: int, tt: int) -> KernelPlan:
    """Grid over token tiles; blocks of indices (SMEM), weights and output; K·tt rows gathered per step."""
    t, k = index_shape
    d = src_shape[1]
    tiles = -(-t // tt)
    index = Operand("index", (tiles * tt * k,), (tt * k,), lambda i: (i,), 4)
    weight = Operand("weight", (t, k), (tt, k), lambda i: (i, 0), 4)
    out = Operand("out", (t, d), (tt, d), lambda i: (i, 0), itemsize, True)
    return KernelPlan((tiles,), (), [index, weight, out], gather_bytes=tt * k * d * itemsize)


def gather_sum(src, index, weight, tile_m: int = 0, interpret=None):
    """out [T, D] = Σ_k weight[t, k] · src[index[t, k]]; index [T, K] into the rows of src [R, D]."""
    t, k = index.shape
    tt = choose_tiling(t, src.shape[1], src.shape[1], (tile_m, 0, 0)).tm
    plan = gather_sum_plan(src.shape, index.shape, src.dtype.itemsize, tt)
    index_op, weight_op, out_op = plan.operands
    flat = jnp.pad(index.reshape(-1).astype(jnp.int32), (0, index_op.shape[0] - t * k))  # pad rows read row 0
    return pl.pallas_call(
        functools.partial(_gather_sum_kernel, k=k),
        grid=plan.grid,
        in_specs=[block_spec(index_op, pltpu.SMEM), block_spec(weight_op), pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=block_spec(out_op),
        out_shape=jax.ShapeDtypeStruct((t, src.shape[1]), src.dtype),
        scratch_shapes=[pltpu.VMEM((tt, src.shape[1]), src.dtype), pltpu.SemaphoreType.DMA((1,))],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",),
                                             vmem_limit_bytes=vmem_limit(plan, tt * src.shape[1] * src.dtype.itemsize)),
        interpret=not on_tpu() if interpret is None else interpret,
    )(flat, weight.astype(jnp.float32), src)
