"""A 2-shape slice of the `cpu` grid for `bench/reuse.py`: d16 and d32, E ∈ {1, 8}, budgets 0.2–1.6 M, 2 controls.

22 runs (4 trunks, 16 branches, 2 controls with other seeds), about 4 min of training on a 2-core CPU.
Same model shapes, data and recipe as configs/grids/cpu.py, budgets 5× smaller (warmup 81,920 tokens).

    python bench/reuse.py --grid bench/reuse_cpu_small.py
"""

from moe_jax.configs.grids.cpu import get_config as cpu_grid


def get_config(arg=None):
    grid = cpu_grid(arg)
    grid.overrides.train.warmup_tokens = 81920.0
    grid.shapes = {"d16": (16, 1, 1), "d32": (32, 2, 2)}
    grid.experts = (1, 8)
    grid.budgets = (204800, 409600, 819200, 1638400)
    grid.controls = (("d32", 8, 819200), ("d32", 8, 1638400))
    return grid
