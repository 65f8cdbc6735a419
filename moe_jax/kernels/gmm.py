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
from moe_jax.kernels.groups import ACTIVE, max_work_items, work_items
from moe_jax.kernels.tiling import KernelPlan, Operand, choose_tiling, vmem_limit


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

        if gather:  # row r of the tile is lhs[rows[tile·tm + r]]
            base = tile[w] * tm
            lhs = gather_tile(lambda r: rows_ref[base + r], lhs_hbm, buf, sem, k * buf.shape[1])
        else:
            lhs = lhs_ref[...]
        contract = 1 if transpose_rhs else 0
        acc_ref[...] += jax.lax.dot_general(lhs, rhs_ref[...], (((1,), (contract,)), ((), ())),
                                            preferred_element_type=jnp.float32)

        @pl.when(k == pl.num_programs(2) - 1)
        def _():
            inside = _rows_in_group(group, tile, offsets, w, tm, out_ref.shape[1])
            value = jnp.where(group[w] == tail, 0.0, acc_ref[...])  # rows past sum(group_sizes) -> 0
            out_ref[...] = jnp.where(inside, value.astype(out_ref.dtype), out_ref[...])


def padded_rows(rows, m: int, tm: int):
    """rows [M] as int32, padded with row 0 to whole tiles (the padding is gathered, then masked)."""
    return jnp.pad(jnp.asarray(rows, jnp.int32), (0, -(-m // tm) * tm - m))


def _plan(grid, meta, blocked, lhs: Operand, rows, tiling, itemsize: int, work_axis: int) -> KernelPlan:
    """A plan whose lhs is blocked, or (rows given) gathered row by row through the scalar `rows`."""
    if rows is None:
        return KernelPlan(grid, meta.scalars(), [lhs, *blocked])
    active = lambda *ids: ids[work_axis] < ids[len(grid) + ACTIVE][0]  # noqa: E731  (grid ids, then scalars)
    return KernelPlan(grid, (*meta.scalars(), rows), blocked, active, gather_bytes=tiling.tm * tiling.tk * itemsize)


def gmm_plan(m: int, k: int, rhs_shape, itemsize: int, meta, tiling, rows=None, transpose_rhs=False) -> KernelPlan:
    """Grid (n tiles, work items, k tiles) and operands of a gmm (shared by pallas_call and byte counter)."""
    g = rhs_shape[0]
    n = rhs_shape[1] if transpose_rhs else rhs_shape[2]
    tm, tk, tn = tiling.tm, tiling.tk, tiling.tn
    grid = (n // tn, max_work_items(m, tm, g), k // tk)
    if transpose_rhs:
        rhs = Operand("rhs", (g, n, k), (None, tn, tk), lambda n_, w, k_, gr, wg, *_: (wg[w], n_, k_), itemsize)
    else:
        rhs = Operand("rhs", (g, k, n), (None, tk, tn), lambda n_, w, k_, gr, wg, *_: (wg[w], k_, n_), itemsize)
    out = Operand("out", (m, n), (tm, tn), lambda n_, w, k_, gr, wg, t, *_: (t[w], n_), itemsize, True)
    lhs = Operand("lhs", (m, k), (tm, tk), lambda n_, w, k_, gr, wg, t, *_: (t[w], k_), itemsize)
    return _plan(grid, meta, [rhs, out], lhs, rows, tiling, itemsize, work_axis=1)


def _run(kernel, plan: KernelPlan, tiling, operands, out_shape, acc_shape, gathered, interpret):
    """pallas_call of a planned grouped kernel: scalars prefetched, f32 accumulator, optional row gather."""
    in_specs = [block_spec(op) for op in plan.operands if not op.output]
    scratch = [pltpu.VMEM(acc_shape, jnp.float32)]
    scratch_bytes = 4 * acc_shape[0] * acc_shape[1]
    if gathered is not None:  # lhs stays in HBM; its rows are copied into a VMEM tile by the kernel
        in_specs = [pl.BlockSpec(memory_space=pl.ANY), *in_specs]
        scratch += [pltpu.VMEM((tiling.tm, tiling.tk), gathered.dtype), pltpu.SemaphoreType.DMA((1,))]
        scratch_bytes += tiling.tm * tiling.tk * gathered.dtype.itemsize
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(plan.scalars), grid=plan.grid, in_specs=in_specs,
        out_specs=block_spec(plan.operands[-1]), scratch_shapes=scratch,
    )
    return pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",) * len(plan.grid),
                                             vmem_limit_bytes=vmem_limit(plan, scratch_bytes)),
        interpret=not on_tpu() if interpret is None else interpret,
    )(*plan.scalars, *operands)


def gmm_call(lhs, rhs, group_sizes, rows=None, tiles=(0, 0, 0), transpose_rhs=False, interpret=None):
    """The gmm kernel (not differentiable; `gmm` below adds the VJP). rows [M] reads lhs[rows]."""
    m = lhs.shape[0] if rows is None else rows.shape[0]
    n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    tiling = choose_tiling(m, lhs.shape[1], n, tiles, lhs.dtype.itemsize)
    meta = work_items(group_sizes, m, tiling.tm, visit_empty=False)
    rows = None if rows is None else padded_rows(rows, m, tiling.tm)
    plan = gmm_plan(m, lhs.shape[1], rhs.shape, lhs.dtype.itemsize, meta, tiling, rows, transpose_rhs)
    kernel = functools.partial(_gmm_kernel, tm=tiling.tm, tail=rhs.shape[0], gather=rows is not None,
                               transpose_rhs=transpose_rhs)
    return _run(kernel, plan, tiling, [lhs, rhs], jax.ShapeDtypeStruct((m, n), lhs.dtype), (tiling.tm, tiling.tn),
                None if rows is None else lhs, interpret)


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
        if gather:
            base = tile[w] * tm
            lhs = gather_tile(lambda r: rows_ref[base + r], lhs_hbm, buf, sem, col * buf.shape[1])
        else:
            lhs = lhs_ref[...]
        inside = _rows_in_group(group, tile, offsets, w, tm, 1)  # [tm, 1]
        lhs = jnp.where(inside, lhs, 0)  # rows of other groups, or past M
        grad = jnp.where(inside, grad_ref[...], 0)
        acc_ref[...] += jax.lax.dot_general(lhs, grad, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    @pl.when(live & last)
    def _():
        out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def tgmm_plan(m: int, k: int, n: int, groups: int, itemsize: int, meta, tiling, rows=None,
              out_itemsize=None) -> KernelPlan:
    """Grid (k tiles, n tiles, work items) and operands of a tgmm: consecutive items of a group accumulate."""
    tm, tk, tn = tiling.tm, tiling.tk, tiling.tn
    grid = (k // tk, n // tn, max_work_items(m, tm, groups))
    grad = Operand("grad", (m, n), (tm, tn), lambda k_, n_, w, gr, wg, t, *_: (t[w], n_), itemsize)
    out = Operand("out", (groups, k, n), (None, tk, tn), lambda k_, n_, w, gr, wg, *_: (wg[w], k_, n_),
                  out_itemsize or itemsize, True)
    lhs = Operand("lhs", (m, k), (tm, tk), lambda k_, n_, w, gr, wg, t, *_: (t[w], k_), itemsize)
    return _plan(grid, meta, [grad, out], lhs, rows, tiling, itemsize, work_axis=2)


def tgmm(lhs, grad, group_sizes, rows=None, tiles=(0, 0, 0), out_dtype=None, interpret=None):
    """[G, K, N] weight gradient: out[g] = Σ_{rows r of g} lhs[r]^T grad[r] (lhs[rows[r]] with rows)."""
    m, k, n = grad.shape[0], lhs.shape[1], grad.shape[1]
    groups = group_sizes.shape[0]
    tiling = choose_tiling(m, k, n, tiles, lhs.dtype.itemsize, weight_grad=True)
    meta = work_items(group_sizes, m, tiling.tm, visit_empty=True)
    out_dtype = jnp.dtype(out_dtype or lhs.dtype)
    rows = None if rows is None else padded_rows(rows, m, tiling.tm)
    plan = tgmm_plan(m, k, n, groups, lhs.dtype.itemsize, meta, tiling, rows, out_dtype.itemsize)
    kernel = functools.partial(_tgmm_kernel, tm=tiling.tm, gather=rows is not None)
    return _run(kernel, plan, tiling, [lhs, grad], jax.ShapeDtypeStruct((groups, k, n), out_dtype),
                (tiling.tk, tiling.tn), None if rows is None else lhs, interpret)


def gmm(lhs, rhs, group_sizes, rows=None, inverse=None, tiles=(0, 0, 0), interpret=None):
    """Differentiable grouped matmul [M, N]; rows are contiguous per group (as in jax.lax.ragged_dot).

    With rows [M] (source row of each product row, grouped) and inverse [R, C] (product row of each
    of the C copies of source row r; M = R·C), lhs [R, K] is read through rows and its gradient is
    gathered back through inverse. rhs may be a tuple of [G, K, N] weights sharing lhs (a tuple of
    outputs then): their input gradients are summed in expert order and gathered back once.
    tiles = (tile_m, tile_k, tile_n), 0 = per-shape default.
    """
    several = isinstance(rhs, (tuple, list))
    outs = _gmm(lhs, tuple(rhs) if several else (rhs,), group_sizes, rows, inverse, tuple(tiles), interpret)
    return outs if several else outs[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _gmm(lhs, rhs: tuple, group_sizes, rows, inverse, tiles, interpret):
    return tuple(gmm_call(lhs, w, group_sizes, rows, tiles, interpret=interpret) for w in rhs)


def _gmm_fwd(lhs, rhs, group_sizes, rows, inverse, tiles, interpret):
    return _gmm(lhs, rhs, group_sizes, rows, inverse, tiles, interpret), (lhs, rhs, group_sizes, rows, inverse)


def _gmm_bwd(tiles, interpret, residuals, grads):
    lhs, rhs, group_sizes, rows, inverse = residuals
    d_rows = sum(gmm_call(g, w, group_sizes, None, tiles, transpose_rhs=True, interpret=interpret)
                 for g, w in zip(grads, rhs))  # [M, K], in expert order
    d_lhs = d_rows
    if rows is not None:  # each source row sums the gradients of its copies
        d_lhs = gather_sum(d_rows, inverse, jnp.ones(inverse.shape, jnp.float32), tiles[0], interpret)
    d_rhs = tuple(tgmm(lhs, g, group_sizes, rows, tiles, out_dtype=w.dtype, interpret=interpret)
                  for g, w in zip(grads, rhs))
    return d_lhs, d_rhs, None, None, None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)
