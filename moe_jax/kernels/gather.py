"""Row gathers in Pallas: each output row is a gate-weighted sum of K rows picked by an index array.

    gather_sum(src [R, D], index [T, K] int, weight [T, K]) -> [T, D]
    out[t] = Σ_k weight[t, k] · src[index[t, k]]

It brings the experts' outputs back to token order (index = each assignment's row in expert order,
weight = its gate), and is the backward of a gmm that read its rows through an index: both are
gathers, so no scatter-add is needed anywhere. Rows are copied one DMA each from HBM into VMEM;
the index array is prefetched into SMEM.
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
    base = pl.program_id(0) * buf.shape[0] * k  # first index of this token tile
    acc = jnp.zeros(out_ref.shape, jnp.float32)
    for choice in range(k):  # K is small (top-k)
        rows = gather_tile(lambda r: index_ref[base + r * k + choice], src_hbm, buf, sem, 0)  # [tt, D]
        acc += weight_ref[:, choice:choice + 1] * rows.astype(jnp.float32)
    out_ref[...] = acc.astype(out_ref.dtype)


def gather_sum_plan(src_shape, index, itemsize: int, tt: int) -> KernelPlan:
    """Grid over token tiles; index [T·K padded] prefetched to SMEM; K·tt rows gathered per step."""
    t, k = index.shape
    d = src_shape[1]
    tiles = -(-t // tt)
    flat = jnp.pad(jnp.asarray(index, jnp.int32).reshape(-1), (0, (tiles * tt - t) * k))  # pad rows read row 0
    weight = Operand("weight", (t, k), (tt, k), lambda i, *_: (i, 0), 4)
    out = Operand("out", (t, d), (tt, d), lambda i, *_: (i, 0), itemsize, True)
    return KernelPlan((tiles,), (flat,), [weight, out], gather_bytes=tt * k * d * itemsize)


def gather_sum(src, index, weight, tile_m: int = 0, interpret=None):
    """out [T, D] = Σ_k weight[t, k] · src[index[t, k]]; index [T, K] into the rows of src [R, D]."""
    t, k = index.shape
    d = src.shape[1]
    tt = choose_tiling(t, d, d, (tile_m, 0, 0)).tm
    plan = gather_sum_plan(src.shape, index, src.dtype.itemsize, tt)
    weight_op, out_op = plan.operands
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=plan.grid,
        in_specs=[block_spec(weight_op), pl.BlockSpec(memory_space=pl.ANY)], out_specs=block_spec(out_op),
        scratch_shapes=[pltpu.VMEM((tt, d), src.dtype), pltpu.SemaphoreType.DMA((1,))],
    )
    return pl.pallas_call(
        functools.partial(_gather_sum_kernel, k=k), grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((t, d), src.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",),
                                             vmem_limit_bytes=vmem_limit(plan, tt * d * src.dtype.itemsize)),
        interpret=not on_tpu() if interpret is None else interpret,
    )(*plan.scalars, weight.astype(jnp.float32), src)
