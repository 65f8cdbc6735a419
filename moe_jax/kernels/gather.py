"""Row gathers in Pallas: each output row is a gate-weighted sum of K rows picked by an index array.

    gather_sum(src [R, D], index [T, K] int, weight [T, K]) -> [T, D]
    out[t] = Σ_k weight[t, k] · src[index[t, k]]

It brings the experts' outputs back to token order (index = each assignment's row in expert order,
weight = its gate), and is the backward of a gmm that read its rows through an index: both are
gathers, so no scatter-add is needed anywhere. With `other` it also returns the dot product of
each gathered row with `other`'s row (the gates' gradient of the combine), without a [T, K, D] copy.
Rows are copied one DMA each from HBM into VMEM; the index array is prefetched into SMEM.
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


def _gather_sum_kernel(index_ref, weight_ref, src_hbm, *refs, k: int, dots: bool):
    if dots:  # also dots[t, choice] = <other[t], src[index[t, choice]]>, from the rows already in VMEM
        other_ref, out_ref, dots_ref, buf, sem = refs
    else:
        out_ref, buf, sem = refs
    base = pl.program_id(0) * buf.shape[0] * k  # first index of this token tile
    acc = jnp.zeros(out_ref.shape, jnp.float32)
    for choice in range(k):  # K is small (top-k)
        rows = gather_tile(lambda r: index_ref[base + r * k + choice], src_hbm, buf, sem, 0).astype(jnp.float32)
        acc += weight_ref[:, choice:choice + 1] * rows  # [tt, D]
        if dots:
            dots_ref[:, choice:choice + 1] = jnp.sum(other_ref[...].astype(jnp.float32) * rows, axis=1, keepdims=True)
    out_ref[...] = acc.astype(out_ref.dtype)


def gather_sum_plan(src_shape, index, itemsize: int, tt: int, dots: bool = False) -> KernelPlan:
    """Grid over token tiles; index [T·K padded] prefetched to SMEM; K·tt rows gathered per step.
    dots: also read `other` [T, D] in token tiles and write dots [T, K] (f32)."""
    t, k = index.shape
    d = src_shape[1]
    tiles = -(-t // tt)
    flat = jnp.pad(jnp.asarray(index, jnp.int32).reshape(-1), (0, (tiles * tt - t) * k))  # pad rows read row 0
    token_tile = lambda i, *_: (i, 0)  # noqa: E731
    operands = [Operand("weight", (t, k), (tt, k), token_tile, 4)]
    if dots:
        operands.append(Operand("other", (t, d), (tt, d), token_tile, itemsize))
    operands.append(Operand("out", (t, d), (tt, d), token_tile, itemsize, True))
    if dots:
        operands.append(Operand("dots", (t, k), (tt, k), token_tile, 4, True))
    return KernelPlan((tiles,), (flat,), operands, gather_bytes=tt * k * d * itemsize)


def gather_sum(src, index, weight, tile_m: int = 0, interpret=None, other=None):
    """out [T, D] = Σ_k weight[t, k] · src[index[t, k]]; index [T, K] into the rows of src [R, D].

    With other [T, D] (src's dtype) it returns (out, dots [T, K] f32), dots[t, k] = <other[t], src[index[t, k]]>:
    a dot product with every gathered row, computed while the row is in VMEM (no [T, K, D] copy).
    """
    t, k = index.shape
    d = src.shape[1]
    tt = choose_tiling(t, d, d, (tile_m, 0, 0)).tm
    dots = other is not None
    plan = gather_sum_plan(src.shape, index, src.dtype.itemsize, tt, dots)
    inputs = [op for op in plan.operands if not op.output]
    outputs = [op for op in plan.operands if op.output]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=plan.grid,
        in_specs=[block_spec(inputs[0]), pl.BlockSpec(memory_space=pl.ANY), *map(block_spec, inputs[1:])],
        out_specs=[block_spec(op) for op in outputs],
        scratch_shapes=[pltpu.VMEM((tt, d), src.dtype), pltpu.SemaphoreType.DMA((1,))],
    )
    out_shapes = [jax.ShapeDtypeStruct((t, d), src.dtype)]
    if dots:
        out_shapes.append(jax.ShapeDtypeStruct((t, k), jnp.float32))
    results = pl.pallas_call(
        functools.partial(_gather_sum_kernel, k=k, dots=dots), grid_spec=grid_spec, out_shape=out_shapes,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",),
                                             vmem_limit_bytes=vmem_limit(plan, tt * d * src.dtype.itemsize)),
        interpret=not on_tpu() if interpret is None else interpret,
    )(*plan.scalars, weight.astype(jnp.float32), src, *([other.astype(src.dtype)] if dots else []))
    return tuple(results) if dots else results[0]
