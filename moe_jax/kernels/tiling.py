"""Tile sizes of the Pallas kernels, their VMEM footprint, and HBM bytes counted from block specs.

A kernel is described by a `KernelPlan`: its grid, its scalar-prefetch arrays and its blocked
operands (block shape + index map, the same objects the `pl.BlockSpec`s are built from). Pallas'
TPU pipeline copies a block between HBM and VMEM only when its block index changes from one grid
step to the next, so walking the grid with concrete metadata counts the bytes the kernel moves.
Row gathers done by hand (DMA per row) are counted per active grid step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from moe_jax.errors import ConfigError

DEFAULT_TILE_M = 512  # rows of the left-hand side per tile
FULL_K_LIMIT = 4096  # contract over the whole K in one step up to this width (weights read once)
VMEM_BUDGET = 32 << 20  # working set the defaults aim for off TPU (half of a 64 MiB-VMEM chip)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Tile sizes of one grouped matmul: tm rows, tk contraction columns, tn output columns."""

    tm: int
    tk: int
    tn: int


def _column_tiles(dim: int) -> list[int]:
    """Candidate tiles for a column dimension, largest first: dim, then its divisors that are multiples of 128."""
    return [dim] + [t for t in range(dim - dim % 128, 127, -128) if dim % t == 0 and t != dim]


def _k_tile(k: int) -> int:
    if k <= FULL_K_LIMIT:
        return k
    fitting = [t for t in _column_tiles(k)[1:] if t <= FULL_K_LIMIT]
    return fitting[0] if fitting else k


def vmem_capacity() -> int:
    """VMEM bytes of the TPU core this runs on; off TPU, 2 · VMEM_BUDGET (a 64 MiB chip is assumed)."""
    from moe_jax.kernels.gather import on_tpu

    if on_tpu():
        from jax.experimental.pallas import tpu as pltpu

        info = getattr(pltpu, "get_tpu_info", None)  # absent in some JAX versions
        if info is not None:
            return info().vmem_capacity_bytes
    return 2 * VMEM_BUDGET


def vmem_budget() -> int:
    """Working-set bytes the default tiles may use: half the core's VMEM."""
    return vmem_capacity() // 2


def working_set(tm: int, tk: int, tn: int, itemsize: int, weight_grad: bool = False) -> int:
    """VMEM bytes of one grid step: double-buffered lhs, rhs (or grad) and output blocks, the f32
    accumulator and the row-gather buffer. weight_grad: tgmm, whose output and accumulator are [tk, tn]."""
    out = tk * tn if weight_grad else tm * tn
    other = tm * tn if weight_grad else tk * tn
    return itemsize * (3 * tm * tk + 2 * other + 2 * out) + 4 * out


def _check_tile(name: str, tile: int, dim: int) -> int:
    if tile == 0:
        return 0
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
        raise ConfigError(f"model.{name} = {tile!r} must be 0 (per-shape default) or a positive integer")
    if name == "tile_m":
        if tile % 8:
            raise ConfigError(f"model.tile_m = {tile} must be a multiple of 8 (or 0 for the default)")
        return tile
    if dim % tile or (tile != dim and tile % 128):
        raise ConfigError(
            f"model.{name} = {tile} must divide the dimension {dim} and be a multiple of 128 or equal {dim} "
            f"(or 0 for the default)"
        )
    return tile


def choose_tiling(m: int, k: int, n: int, tiles: Sequence[int] = (0, 0, 0), itemsize: int = 2,
                  weight_grad: bool = False, budget: int | None = None) -> Tiling:
    """Tiles for lhs [m, k] @ rhs [k, n]; `tiles` = (tile_m, tile_k, tile_n) with 0 = per-shape default.

    Defaults: tm = 512 (fewer for small m, rounded up to 8); tk = the whole k up to 4096 (each
    expert's weights are then read once per column tile); tn = the widest divisor of n (n itself,
    then multiples of 128) whose `working_set` fits the VMEM budget, so that the left-hand side is
    read as few times as possible (once when tn = n).
    """
    names = ("tile_m", "tile_k", "tile_n")
    tile_m, tile_k, tile_n = (_check_tile(name, t, dim) for name, t, dim in zip(names, tiles, (m, k, n)))
    tm = tile_m or min(DEFAULT_TILE_M, -(-m // 8) * 8)
    tk = tile_k or _k_tile(k)
    if tile_n:
        return Tiling(tm, tk, tile_n)
    budget = vmem_budget() if budget is None else budget
    candidates = _column_tiles(n)
    tn = next((t for t in candidates if working_set(tm, tk, t, itemsize, weight_grad) <= budget), candidates[-1])
    return Tiling(tm, tk, tn)


def layer_tilings(rows: int, d_model: int, ffn: int, tiles: Sequence[int] = (0, 0, 0),
                  itemsize: int = 2) -> dict[str, Tiling]:
    """Tiles of the grouped kernels of one `pallas` MoE layer with `rows` = T·K assignments (the
    backward's gmm with transposed weights has the forward tiles of the other projection)."""
    return {"gate/up": choose_tiling(rows, d_model, ffn, tiles, itemsize),
            "down": choose_tiling(rows, ffn, d_model, tiles, itemsize),
            "tgmm gate/up": choose_tiling(rows, d_model, ffn, tiles, itemsize, weight_grad=True),
            "tgmm down": choose_tiling(rows, ffn, d_model, tiles, itemsize, weight_grad=True)}


def check_tiles(tiles: Sequence[int], widths: Sequence[int]) -> None:
    """Validate (tile_m, tile_k, tile_n) of a config against the model's column widths (D and F)."""
    _check_tile("tile_m", tiles[0], 0)
    for name, tile in zip(("tile_k", "tile_n"), tiles[1:]):
        for width in widths:
            _check_tile(name, tile, width)


@dataclasses.dataclass
class Operand:
    """One blocked operand of a kernel: array shape, block shape (None = squeezed), index map, dtype size."""

    name: str
    shape: tuple[int, ...]
    block: tuple[int | None, ...]
    index_map: Callable
    itemsize: int
    output: bool = False

    def block_bytes(self, index: Sequence[int]) -> int:
        """Bytes of the block at `index`, clipped at the array's edge."""
        size = self.itemsize
        for dim, blk, i in zip(self.shape, self.block, index):
            b = 1 if blk is None else blk
            size *= max(0, min(b, dim - i * b))
        return size


@dataclasses.dataclass
class KernelPlan:
    """Grid, scalar-prefetch arrays, blocked operands and per-step row gathers of one pallas_call."""

    grid: tuple[int, ...]
    scalars: tuple  # arrays passed by scalar prefetch (index maps receive them after the grid ids)
    operands: list[Operand]
    active: Callable[..., bool] = lambda *ids: True  # noqa: E731  whether a grid step does work
    gather_bytes: int = 0  # bytes gathered row by row by each active step

    def hbm_bytes(self) -> dict[str, int]:
        """HBM bytes read and written, walking the grid with the concrete scalars (numpy)."""
        scalars = tuple(np.asarray(s) for s in self.scalars)
        read = sum(s.nbytes for s in scalars)
        written = 0
        last: list = [None] * len(self.operands)
        for ids in np.ndindex(*self.grid):
            for i, op in enumerate(self.operands):
                index = tuple(int(v) for v in op.index_map(*ids, *scalars))
                if index != last[i]:
                    if op.output and last[i] is not None:
                        written += op.block_bytes(last[i])
                    elif not op.output:
                        read += op.block_bytes(index)
                    last[i] = index
            if self.gather_bytes and self.active(*ids, *scalars):
                read += self.gather_bytes
        written += sum(op.block_bytes(last[i]) for i, op in enumerate(self.operands) if op.output)
        return {"read": read, "written": written}

    def vmem_bytes(self) -> int:
        """VMEM for double-buffered blocks (no scratch): a floor for the compiler's VMEM limit."""
        return sum(2 * op.itemsize * math.prod(b or 1 for b in op.block) for op in self.operands)


def vmem_limit(plan: KernelPlan, scratch_bytes: int) -> int:
    """The scoped-VMEM limit to ask Mosaic for: blocks + scratch + a quarter and 4 MiB of headroom,
    at least 32 MiB, at most the core's VMEM."""
    return min(vmem_capacity(), max(32 << 20, (plan.vmem_bytes() + scratch_bytes) * 5 // 4 + (4 << 20)))
