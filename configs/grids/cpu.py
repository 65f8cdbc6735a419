"""The paper's grid at CPU scale (the reproduction): 4 widths × E ∈ {1, 2, 4, 8} × 4 budgets, 2 controls.

Shape rule scaled down: head dim 16 and layers = heads = d/16 (the paper: 64 and d/64), SwiGLU 3·d,
byte-level vocabulary (259 ids) so FFN parameters are a large share of N_act (README demo analysis).
N_act incl. embeddings: d16 11.7 K, d32 43.5 K, d48 115 K, d64 247 K (21× span). Budgets 1–8 M tokens
(1,024,000 · 2^k: both T and 0.8·T end a 4,096-token step), 4–700 tokens per active parameter.

82 runs: 16 trunks to 6.55 M tokens, 64 cooldown branches, 2 controls (independent trapezoidal runs of
d32 E=8 at 4 M and 8 M tokens, with other seeds: train.seed and data.seed + 1). Tokens: 154 M with reuse
instead of 246 M independent (0.627×).

Time on a 2-core CPU, measured end to end on a mostly idle machine (2026-11-30): 86 min with
`--parallel 1`, of which 69 min inside the 80 trunks and branches, 3 min in the controls and ~10 s of
process start-up per run. The results are committed in docs/reproduction/ (`docs/reproduction.md`).
Interrupted sweeps resume: re-run `moe-jax sweep run --dir DIR`.

    moe-jax sweep plan --grid cpu --dir sweeps/cpu && moe-jax sweep run --dir sweeps/cpu
"""

import ml_collections


def get_config(arg=None):
    del arg
    grid = ml_collections.ConfigDict()
    grid.base = "demo:moe"  # byte-level gutenberg_poetry, seq 128, capacity factor 1.5 in training and eval
    grid.overrides = {
        "train": {"batch_size": 32, "batch_ramp_tokens": (262144.0,), "batch_ramp_sizes": (16,),  # a ramp in miniature
                  "warmup_tokens": 204800.0, "learning_rate": 1e-2,  # the demo's best LR at d32 (README)
                  "eval_every": 0, "eval_batches": 32, "checkpoint_every": 250, "keep_checkpoints": 2,
                  "log_every": 25, "progress": "plain", "tensorboard": False, "measure_mfu": False},
    }
    grid.shapes = {"d16": (16, 1, 1), "d32": (32, 2, 2), "d48": (48, 3, 3), "d64": (64, 4, 4)}
    grid.experts = (1, 2, 4, 8)
    grid.budgets = (1024000, 2048000, 4096000, 8192000)
    grid.max_tokens_per_param = 0.0  # CPU scale needs many tokens per parameter; keep every budget
    grid.controls = (("d32", 8, 4096000), ("d32", 8, 8192000))
    grid.control_seed = 1  # independent runs: other init and data order (0 = bitwise equal to the branch on CPU)
    return grid
