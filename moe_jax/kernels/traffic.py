"""HBM bytes of one MoE layer, forward and backward: fused (`pallas`) against permute -> gmm -> unpermute.

Kernel stages are counted from their block specs (`KernelPlan.hbm_bytes`); XLA stages (the
unfused path's permute, unpermute and their gradients, the SwiGLU product and its gradient, the
unfused gate gradient) as one read of every input and one write of the output. Routing is balanced
(T·K/E assignments per expert). Both variants use the same Pallas gmm/tgmm kernels, so the
difference is what fusing the permutations saves.
"""

from __future__ import annotations

import numpy as np

from moe_jax.kernels.gather import gather_sum_plan
from moe_jax.kernels.gmm import gmm_plan, padded_rows, tgmm_plan
from moe_jax.kernels.groups import work_items
from moe_jax.kernels.tiling import choose_tiling

PAPER_SIZES = ({"tokens": 65536, "d_model": 1024, "ffn": 3072, "experts": 8, "top_k": 1},
               {"tokens": 65536, "d_model": 1024, "ffn": 3072, "experts": 32, "top_k": 1})


def _count(plan) -> int:
    counted = plan.hbm_bytes()
    return counted["read"] + counted["written"]


class _Layer:
    """Byte counts of the kernels of one layer shape (balanced top-k routing)."""

    def __init__(self, tokens, d_model, ffn, experts, top_k, itemsize, tiles):
        self.t, self.d, self.f, self.e, self.k = tokens, d_model, ffn, experts, top_k
        self.b, self.tiles = itemsize, tiles
        self.m = tokens * top_k
        sizes = np.full(experts, self.m // experts, np.int32)
        sizes[: self.m % experts] += 1
        self.sizes = sizes
        self.rows = np.repeat(np.arange(tokens, dtype=np.int32), top_k)  # only their number matters here

    def gmm(self, k, n, gathered=False, transpose_rhs=False) -> int:
        tiling = choose_tiling(self.m, k, n, self.tiles, self.b)
        meta = work_items(self.sizes, self.m, tiling.tm, visit_empty=False)
        rows = padded_rows(self.rows, self.m, tiling.tm) if gathered else None
        rhs = (self.e, n, k) if transpose_rhs else (self.e, k, n)
        return _count(gmm_plan(self.m, k, rhs, self.b, meta, tiling, rows, transpose_rhs))

    def tgmm(self, k, n, gathered=False) -> int:
        tiling = choose_tiling(self.m, k, n, self.tiles, self.b, weight_grad=True)
        meta = work_items(self.sizes, self.m, tiling.tm, visit_empty=True)
        rows = padded_rows(self.rows, self.m, tiling.tm) if gathered else None
        return _count(tgmm_plan(self.m, k, n, self.e, self.b, meta, tiling, rows))

    def gather_sum(self, out_rows: int, fan_in: int, dots: bool = False) -> int:
        tt = choose_tiling(out_rows, self.d, self.d, (self.tiles[0], 0, 0)).tm
        return _count(gather_sum_plan((self.m, self.d), np.zeros((out_rows, fan_in), np.int32), self.b, tt, dots))


def forward_bytes(layer: _Layer) -> dict[str, tuple[int, int]]:
    """{stage: (fused, unfused)} HBM bytes of one MoE layer's forward pass."""
    m, d, f, b = layer.m, layer.d, layer.f, layer.b
    act, tok, idx = m * d * b, layer.t * d * b, 4 * m
    return {
        "permute x -> [T·K, D]": (0, idx + 2 * act),
        "gmm gate + up": (2 * layer.gmm(d, f, gathered=True), 2 * layer.gmm(d, f)),
        "SwiGLU product": (3 * m * f * b,) * 2,
        "gmm down": (layer.gmm(f, d),) * 2,
        "unpermute -> [T·K, D]": (0, idx + 2 * act),
        "gate-weighted sum -> [T, D]": (layer.gather_sum(layer.t, layer.k), act + 4 * m + tok),
    }


def backward_bytes(layer: _Layer) -> dict[str, tuple[int, int]]:
    """{stage: (fused, unfused)} HBM bytes of one MoE layer's backward pass (weights' and input gradients)."""
    m, d, f, b = layer.m, layer.d, layer.f, layer.b
    act, tok, idx, hid = m * d * b, layer.t * d * b, 4 * m, m * f * b
    d_gates = act + tok + idx + 4 * m  # unfused: the unpermuted rows · dy in XLA
    # fused: one kernel gathers dy, scales it (d ys) and dots it with ys (read blocked); [T·K] -> [T, K] in XLA
    fused_d_ys = layer.gather_sum(m, 1, dots=True) + idx + 4 * m + 4 * m
    return {
        "d ys, d gates": (fused_d_ys, (tok + 4 * m + act) + d_gates + (idx + 2 * act)),
        "gmm down backward": (layer.gmm(d, f, transpose_rhs=True) + layer.tgmm(f, d),) * 2,
        "SwiGLU backward": (5 * hid,) * 2,
        "gmm gate + up backward": tuple(  # two gmm^T, two tgmm, the sum of the two input gradients
            2 * (layer.gmm(f, d, transpose_rhs=True) + layer.tgmm(d, f, gathered=fused)) + 3 * act
            for fused in (True, False)),
        "d x back to tokens": (layer.gather_sum(layer.t, layer.k), act + idx + tok),
    }


def layer_bytes(tokens: int, d_model: int, ffn: int, experts: int, top_k: int = 1, itemsize: int = 2,
                tiles=(0, 0, 0)) -> dict[str, dict[str, int]]:
    """{stage: {'fused': bytes, 'unfused': bytes}}, forward then backward stages, with subtotals."""
    layer = _Layer(tokens, d_model, ffn, experts, top_k, itemsize, tiles)
    table = {}
    for part, stages in (("forward", forward_bytes(layer)), ("backward", backward_bytes(layer))):
        rows = {name: {"fused": fused, "unfused": unfused} for name, (fused, unfused) in stages.items()}
        table.update(rows)
        table[f"{part} total"] = {v: sum(r[v] for r in rows.values()) for v in ("fused", "unfused")}
    return table


def markdown_table(sizes=PAPER_SIZES) -> str:
    """The byte-count table of docs/kernels.md (MiB per training step of one layer, bf16)."""
    tables = [(s, layer_bytes(**s)) for s in sizes]
    head = "| stage | " + " | ".join(f"E={s['experts']} fused | E={s['experts']} unfused" for s, _ in tables) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(tables))]
    for stage in tables[0][1]:
        cells = [f"{t[stage][v] / 2**20:,.1f}" for _, t in tables for v in ("fused", "unfused")]
        name = f"**{stage}**" if stage.endswith("total") else stage
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
