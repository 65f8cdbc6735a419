"""Grouped matmuls in Pallas: `gmm` (rows of group g times rhs[g]) and `tgmm` (its weight gradient).

    gmm(lhs [M, K], rhs [G, K, N], group_sizes [G]) -> [M, N]        out[r] = lhs[r] @ rhs[g(r)]
    tgmm(lhs [M, K], grad [M, N], group_sizes [G]) -> [G, K, N]      out[g] = lhs[rows of g]^T @ grad[...]

Both run one static grid sized for the worst case (see `groups.py`); bf16 inputs accumulate in f32
(a VMEM scratch). With `rows` [M] the left-hand side is read through a row-index array: row r of
the product is lhs[rows[r]], copied row by row (DMA) from HBM into VMEM, so a caller never builds
the permuted [M, K] copy. Off TPU the kernels run with `interpret=True`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from moe_jax.kernels.gather import block_spec, gather_sum, gather_tile, on_tpu
from moe_jax.kernels.groups import max_work_items, work_items
from moe_jax.kernels.tiling import KernelPlan, Operand, choose_tiling, vmem_limit

N_SCALARS = 5  # group, weight_group, tile, offsets, active (`WorkItems.scalars`)


def _rows_in_group(group, tile, offsets, w, tm: int, width: int):
    """[tm, width] mask: rows of this work item's tile that belong to its group."""
    g = group[w]
    row = tile[w] * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, width), 0)
    return (row >= offsets[g]) & (row < offsets[g + 1])


def _gmm_kernel(group, weight_group, tile, offsets, active, *refs, tm, tail, gather, transpose_rhs):
    if gather:
        rows_ref, lhs_hbm, rhs_ref, out_ref, acc_ref, buf, sem = refs
    else:
        lhs_ref, rhs_ref, out_ref, acc_ref = refs
    w, k = pl.program_id(1), pl.program_id(2)

    @pl.when(w < active[0])
    def _():
        @pl.when(k == 0)
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        lhs = gather_tile(rows_ref.__getitem__, lhs_hbm, buf, sem, k * buf.shape[1]) if gather else lhs_ref[...]
        contract = 1 if transpose_rhs else 0
        acc_ref[...] += jax.lax.dot_general(lhs, rhs_ref[...], (((1,), (contract,)), ((), ())),
                                            preferred_element_type=jnp.float32)

        @pl.when(k == pl.num_programs(2) - 1)
        def _():
            inside = _rows_in_group(group, tile, offsets, w, tm, out_ref.shape[1])
            value = jnp.where(group[w] == tail, 0.0, acc_ref[...])  # rows past sum(group_sizes) -> 0
            out_ref[...] = jnp.where(inside, value.astype(out_ref.dtype), out_ref[...])


def gmm_plan(lhs_shape, rhs_shape, itemsize: int, meta, tiling, *, rows_len=None, transpose_rhs=False,
             out_itemsize=None) -> KernelPlan:
    """Grid and blocked operands of a gmm call (shared by the pallas_call and the byte counter)."""
    m = rows_len if rows_len is not None else lhs_shape[0]
    g, k = rhs_shape[0], lhs_shape[1]
    n = rhs_shape[1] if transpose_rhs else rhs_shape[2]
    tm, tk, tn = tiling.tm, tiling.tk, tiling.tn
    grid = (n // tn, max_work_items(m, tm, g), k // tk)
    if transpose_rhs:
        rhs = Operand("rhs", (g, n, k), (None, tn, tk), lambda n_, w, k_, gr, wg, *_: (wg[w], n_, k_), itemsize)
    else:
        rhs = Operand("rhs", (g, k, n), (None, tk, tn), lambda n_, w, k_, gr, wg, *_: (wg[w], k_, n_), itemsize)
    out = Operand("out", (m, n), (tm, tn), lambda n_, w, k_, gr, wg, t, *_: (t[w], n_), out_itemsize or itemsize, True)
    if rows_len is None:
        lhs = Operand("lhs", (m, k), (tm, tk), lambda n_, w, k_, gr, wg, t, *_: (t[w], k_), itemsize)
        return KernelPlan(grid, meta.scalars(), [lhs, rhs, out])
    rows = Operand("rows", (-(-m // tm) * tm,), (tm,), lambda n_, w, k_, gr, wg, t, *_: (t[w],), 4)
    active = lambda n_, w, k_, *s: w < s[4][0]  # noqa: E731
    return KernelPlan(grid, meta.scalars(), [rows, rhs, out], active, gather_bytes=tm * tk * itemsize)


def gmm_call(lhs, rhs, group_sizes, rows=None, tiles=(0, 0, 0), transpose_rhs=False, interpret=None):
    """The gmm kernel (not differentiable; `gmm` below adds the VJP). rows [M] reads lhs[rows]."""
    m = lhs.shape[0] if rows is None else rows.shape[0]
    n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    tiling = choose_tiling(m, lhs.shape[1], n, tiles)
    meta = work_items(group_sizes, m, tiling.tm, visit_empty=False)
    plan = gmm_plan(lhs.shape, rhs.shape, lhs.dtype.itemsize, meta, tiling,
                    rows_len=None if rows is None else m, transpose_rhs=transpose_rhs)
    gather = rows is not None
    in_specs = [block_spec(op) for op in plan.operands if not op.output]
    scratch = [pltpu.VMEM((tiling.tm, tiling.tn), jnp.float32)]
    operands = [lhs, rhs]
    if gather:
        in_specs = [block_spec(plan.operands[0], pltpu.SMEM), pl.BlockSpec(memory_space=pl.ANY), in_specs[1]]
        scratch += [pltpu.VMEM((tiling.tm, tiling.tk), lhs.dtype), pltpu.SemaphoreType.DMA((1,))]
        pad = plan.operands[0].shape[0] - m
        operands = [jnp.pad(rows.astype(jnp.int32), (0, pad)), lhs, rhs]
    kernel = functools.partial(_gmm_kernel, tm=tiling.tm, tail=rhs.shape[0], gather=gather, transpose_rhs=transpose_rhs)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=N_SCALARS, grid=plan.grid, in_specs=in_specs,
        out_specs=block_spec(plan.operands[-1]), scratch_shapes=scratch,
    )
    scratch_bytes = tiling.tm * (tiling.tn * 4 + tiling.tk * lhs.dtype.itemsize)
    return pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct((m, n), lhs.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",) * 3,
                                             vmem_limit_bytes=vmem_limit(plan, scratch_bytes)),
        interpret=not on_tpu() if interpret is None else interpret,
    )(*meta.scalars(), *operands)


def _tgmm_kernel(group, weight_group, tile, offsets, active, *refs, tm, gather):
    if gather:
        rows_ref, lhs_hbm, grad_ref, out_ref, acc_ref, buf, sem = refs
    else:
        lhs_ref, grad_ref, out_ref, acc_ref = refs
    col, w, last_w = pl.program_id(0), pl.program_id(2), pl.num_programs(2) - 1  # ids read outside pl.when
    live, g = w < active[0], group[w]
    first = (w == 0) | (g != group[jnp.maximum(w - 1, 0)])
    last = (w == active[0] - 1) | (g != group[jnp.minimum(w + 1, last_w)])

    @pl.when(live & first)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(live)
    def _():
        lhs = gather_tile(rows_ref.__getitem__, lhs_hbm, buf, sem, col * buf.shape[1]) if gather else lhs_ref[...]
        inside = _rows_in_group(group, tile, offsets, w, tm, 1)  # [tm, 1]
        lhs = jnp.where(inside, lhs, 0)  # rows of other groups, or past M
        grad = jnp.where(inside, grad_ref[...], 0)
        acc_ref[...] += jax.lax.dot_general(lhs, grad, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    @pl.when(live & last)
    def _():
        out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def tgmm_plan(lhs_shape, grad_shape, groups: int, itemsize: int, meta, tiling, *, rows_len=None,
              out_itemsize=None) -> KernelPlan:
    """Grid (k tiles, n tiles, work items) and blocked operands of a tgmm call."""
    m = rows_len if rows_len is not None else lhs_shape[0]
    k, n = lhs_shape[1], grad_shape[1]
    tm, tk, tn = tiling.tm, tiling.tk, tiling.tn
    grid = (k // tk, n // tn, max_work_items(m, tm, groups))
    grad = Operand("grad", (m, n), (tm, tn), lambda k_, n_, w, gr, wg, t, *_: (t[w], n_), itemsize)
    out = Operand("out", (groups, k, n), (None, tk, tn), lambda k_, n_, w, gr, wg, *_: (wg[w], k_, n_),
                  out_itemsize or itemsize, True)
    if rows_len is None:
        lhs = Operand("lhs", (m, k), (tm, tk), lambda k_, n_, w, gr, wg, t, *_: (t[w], k_), itemsize)
        return KernelPlan(grid, meta.scalars(), [lhs, grad, out])
    rows = Operand("rows", (-(-m // tm) * tm,), (tm,), lambda k_, n_, w, gr, wg, t, *_: (t[w],), 4)
    active = lambda k_, n_, w, *s: w < s[4][0]  # noqa: E731
    return KernelPlan(grid, meta.scalars(), [rows, grad, out], active, gather_bytes=tm * tk * itemsize)


def tgmm(lhs, grad, group_sizes, rows=None, tiles=(0, 0, 0), out_dtype=None, interpret=None):
    """[G, K, N] weight gradient: out[g] = Σ_{rows r of g} lhs[r]^T grad[r] (lhs[rows[r]] with rows)."""
    m = grad.shape[0]
    groups = group_sizes.shape[0]
    tiling = choose_tiling(m, lhs.shape[1], grad.shape[1], tiles)
    meta = work_items(group_sizes, m, tiling.tm, visit_empty=True)
    out_dtype = jnp.dtype(out_dtype or lhs.dtype)
    plan = tgmm_plan(lhs.shape, grad.shape, groups, lhs.dtype.itemsize, meta, tiling,
                     rows_len=None if rows is None else m, out_itemsize=out_dtype.itemsize)
    gather = rows is not None
    in_specs = [block_spec(op) for op in plan.operands if not op.output]
    scratch = [pltpu.VMEM((tiling.tk, tiling.tn), jnp.float32)]
    operands = [lhs, grad]
    if gather:
        in_specs = [block_spec(plan.operands[0], pltpu.SMEM), pl.BlockSpec(memory_space=pl.ANY), in_specs[1]]
        scratch += [pltpu.VMEM((tiling.tm, tiling.tk), lhs.dtype), pltpu.SemaphoreType.DMA((1,))]
        operands = [jnp.pad(rows.astype(jnp.int32), (0, plan.operands[0].shape[0] - m)), lhs, grad]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=N_SCALARS, grid=plan.grid, in_specs=in_specs,
        out_specs=block_spec(plan.operands[-1]), scratch_shapes=scratch,
    )
    scratch_bytes = tiling.tk * tiling.tn * 4 + tiling.tm * tiling.tk * lhs.dtype.itemsize
    return pl.pallas_call(
        functools.partial(_tgmm_kernel, tm=tiling.tm, gather=gather), grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((groups, lhs.shape[1], grad.shape[1]), out_dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",) * 3,
                                             vmem_limit_bytes=vmem_limit(plan, scratch_bytes)),
        interpret=not on_tpu() if interpret is None else interpret,
    )(*meta.scalars(), *operands)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def gmm(lhs, rhs, group_sizes, rows=None, inverse=None, tiles=(0, 0, 0), interpret=None):
    """Differentiable grouped matmul [M, N]; rows are contiguous per group (as in jax.lax.ragged_dot).

    With rows [M] (source row of each product row, grouped) and inverse [R, C] (product row of each
    of the C copies of source row r; M = R·C), lhs [R, K] is read through rows and its gradient is
    gathered back through inverse. tiles = (tile_m, tile_k, tile_n), 0 = per-shape default.
    """
    return gmm_call(lhs, rhs, group_sizes, rows, tiles, interpret=interpret)


def _gmm_fwd(lhs, rhs, group_sizes, rows, inverse, tiles, interpret):
    return gmm_call(lhs, rhs, group_sizes, rows, tiles, interpret=interpret), (lhs, rhs, group_sizes, rows, inverse)


def _gmm_bwd(tiles, interpret, residuals, grad):
    lhs, rhs, group_sizes, rows, inverse = residuals
    d_rows = gmm_call(grad, rhs, group_sizes, None, tiles, transpose_rhs=True, interpret=interpret)  # [M, K]
    d_lhs = d_rows
    if rows is not None:  # each source row sums the gradients of its copies
        d_lhs = gather_sum(d_rows, inverse, jnp.ones(inverse.shape, jnp.float32), tiles[0], interpret)
    d_rhs = tgmm(lhs, grad, group_sizes, rows, tiles, out_dtype=rhs.dtype, interpret=interpret)
    return d_lhs, d_rhs, None, None, None


gmm.defvjp(_gmm_fwd, _gmm_bwd)
