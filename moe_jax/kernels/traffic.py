"""HBM bytes of one MoE forward pass: fused (`pallas`) against permute -> gmm -> unpermute.

Kernel stages are counted from their block specs (`KernelPlan.hbm_bytes`); the XLA gathers of the
unfused path (permute, unpermute) and the SwiGLU product are counted as one read of every input
and one write of the output. Routing is balanced (T·K/E assignments per expert).
"""

from __future__ import annotations

import numpy as np

from moe_jax.kernels.gather import gather_sum_plan
from moe_jax.kernels.gmm import gmm_plan, padded_rows
from moe_jax.kernels.groups import work_items
from moe_jax.kernels.tiling import choose_tiling

PAPER_SIZES = ({"tokens": 65536, "d_model": 1024, "ffn": 3072, "experts": 8, "top_k": 1},
               {"tokens": 65536, "d_model": 1024, "ffn": 3072, "experts": 32, "top_k": 1})


def _gmm_bytes(m, k, n, experts, itemsize, group_sizes, rows=None, tiles=(0, 0, 0)) -> int:
    tiling = choose_tiling(m, k, n, tiles, itemsize)
    meta = work_items(group_sizes, m, tiling.tm, visit_empty=False)
    rows = None if rows is None else padded_rows(rows, m, tiling.tm)
    counted = gmm_plan(m, k, (experts, k, n), itemsize, meta, tiling, rows).hbm_bytes()
    return counted["read"] + counted["written"]


def forward_bytes(tokens: int, d_model: int, ffn: int, experts: int, top_k: int = 1, itemsize: int = 2,
                  tiles=(0, 0, 0)) -> dict[str, dict[str, int]]:
    """{stage: {'fused': bytes, 'unfused': bytes}} for one MoE layer's forward pass (bf16 = itemsize 2)."""
    t, d, f, e, k = tokens, d_model, ffn, experts, top_k
    m = t * k
    group_sizes = np.full(e, m // e, np.int32)
    group_sizes[: m % e] += 1
    rows = np.repeat(np.arange(t, dtype=np.int32), k)  # any rows: the count only needs their number
    act, idx = m * d * itemsize, 4 * m
    stages = {
        "permute x -> [T·K, D]": (0, idx + 2 * act),
        "gmm gate + up": (2 * _gmm_bytes(m, d, f, e, itemsize, group_sizes, rows, tiles),
                          2 * _gmm_bytes(m, d, f, e, itemsize, group_sizes, None, tiles)),
        "SwiGLU product": (3 * m * f * itemsize,) * 2,
        "gmm down": (_gmm_bytes(m, f, d, e, itemsize, group_sizes, None, tiles),) * 2,
        "unpermute -> [T·K, D]": (0, idx + 2 * act),
        "gate-weighted sum -> [T, D]": (_combine_bytes(t, d, k, itemsize, tiles[0]), act + 4 * m + t * d * itemsize),
    }
    table = {name: {"fused": fused, "unfused": unfused} for name, (fused, unfused) in stages.items()}
    table["total"] = {v: sum(row[v] for row in table.values()) for v in ("fused", "unfused")}
    return table


def _combine_bytes(t: int, d: int, k: int, itemsize: int, tile_m: int) -> int:
    tt = choose_tiling(t, d, d, (tile_m, 0, 0)).tm
    counted = gather_sum_plan((t * k, d), np.zeros((t, k), np.int32), itemsize, tt).hbm_bytes()
    return counted["read"] + counted["written"]


def markdown_table(sizes=PAPER_SIZES) -> str:
    """The byte-count table of docs/kernels.md (MiB per forward pass of one layer, bf16)."""
    tables = [(s, forward_bytes(**s)) for s in sizes]
    head = "| stage | " + " | ".join(f"E={s['experts']} fused | E={s['experts']} unfused" for s, _ in tables) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(tables))]
    for stage in tables[0][1]:
        cells = [f"{t[stage][v] / 2**20:,.1f}" for _, t in tables for v in ("fused", "unfused")]
        name = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
