"""The CI sweep: one byte-level d 16 shape, E ∈ {1, 4}, three budgets of 20–61 k tokens, one control.

9 runs (2 trunks, 6 branches, 1 control); 1–2 minutes on an idle 2-core CPU (81 s of CPU time, measured).

    moe-jax sweep plan --grid smoke --dir sweeps/smoke && moe-jax sweep run --dir sweeps/smoke
"""

import ml_collections


def get_config(arg=None):
    del arg
    grid = ml_collections.ConfigDict()
    grid.base = "demo:moe"  # byte-level vocabulary (259 ids), capacity factor 1.5 in training
    grid.overrides = {
        "data": {"task": "fixture", "seq_len": 64},  # the committed test corpus; prepares itself offline
        "train": {"batch_size": 16, "warmup_tokens": 4096.0, "learning_rate": 1e-2, "eval_every": 0,
                  "eval_batches": 4, "eval_batch_size": 16, "checkpoint_every": 10, "keep_checkpoints": 2,
                  "log_every": 4, "progress": "plain", "tensorboard": False, "measure_mfu": False},
    }
    grid.shapes = {"d16": (16, 1, 1)}  # name: (d_model, n_layers, n_heads)
    grid.experts = (1, 4)
    grid.budgets = (20480, 40960, 61440)  # 1,024 tokens per step; branch points after 16, 32 and 48 steps
    grid.max_tokens_per_param = 0.0  # keep every budget
    grid.controls = (("d16", 4, 40960),)  # an independent trapezoidal run beside the E=4 branch at 40,960
    grid.control_seed = 0  # same seeds as the branch: on CPU it must match the branch bitwise
    return grid
