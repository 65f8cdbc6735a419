"""The paper's grid (SPEC §5): 17 shapes × E ∈ {1, 2, 4, 8, 16, 32} × 13 budgets of 0.5–128 B tokens.

Budgets above 100 tokens per non-embedding active parameter are dropped per shape (the paper's limit).
Each nominal budget is moved to the nearest token count at which both the budget and its branch point
(0.8·T) end a step of the paper's batch ramp (128/256/512 × 512 tokens), within 0.1 % of the nominal one.
The paper's recipe otherwise (configs/paper.py): FineWeb-Edu, GPT-2 BPE, LR rule, trapezoidal cooldown.

    moe-jax sweep plan --grid paper --dir sweeps/paper --runs-root gs://BUCKET/runs \
        --config.data.fineweb_path=gs://BUCKET/fineweb --config.data.vocab_path=<GPT-2 BPE dir>
"""

import ml_collections

from moe_jax.scaling import constants
from moe_jax.train.branching import suggest_budget

RAMP = dict(seq_len=512, final_batch=512, ramp_tokens=(0.5e9, 1.0e9), ramp_sizes=(128, 256))  # SPEC §5


def get_config(arg=None):
    del arg
    grid = ml_collections.ConfigDict()
    grid.base = "paper:d512_E1"  # the paper's recipe; every field but the shape is shared
    grid.overrides = {"train": {"checkpoint_every": 2000, "eval_every": 5000}}
    grid.shapes = {name: shape for name, shape in constants.PAPER_SHAPES.items()}
    grid.experts = constants.PAPER_EXPERTS
    grid.budgets = tuple(suggest_budget(b * 1e9, constants.PAPER_COOLDOWN_FRACTION, RAMP)
                         for b in constants.PAPER_TOKEN_BUDGETS_B)
    grid.max_tokens_per_param = 100.0
    grid.controls = (("d512", 8, grid.budgets[2]), ("d512", 8, grid.budgets[4]))  # independent runs at ~2 B and ~8 B
    grid.control_seed = 1
    return grid
