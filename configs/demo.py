"""The README demo pair: `configs/demo.py:dense` and `configs/demo.py:moe` (E = 8), equal active parameters.

A byte-level model small enough (43 k active parameters) to see 230 tokens per active parameter in
about two minutes on a 2-core CPU. The paper's law (SPEC §1) says an MoE beats the dense model of equal
N_act only when tokens per parameter are large enough (at N_act = 1e6 the E = 8 curve crosses the dense
one between 10 and 100 tokens/parameter), so a CPU demo must trade width for tokens. Width 32 rather
than 64 because extra FFN parameters must matter for an MoE to help: at d 64 an 8× wider dense FFN gains
only 0.03 nats/byte over 5 M tokens, at d 32 it gains 0.06 (README "What the demo shows").

    moe-jax demo                                     # trains both, prints the comparison
    moe-jax train --config configs/demo.py:moe --workdir runs/demo_moe
"""

import ml_collections

from moe_jax.data.config import data_config
from moe_jax.errors import ConfigError
from moe_jax.model.config import model_config
from moe_jax.parallel.mesh import mesh_config
from moe_jax.train.config import train_config

VARIANTS = {"dense": 1, "moe": 8}


def get_config(arg=None):
    name = arg or "moe"
    if name not in VARIANTS:
        raise ConfigError(f"unknown demo config {name!r}; use configs/demo.py:dense or configs/demo.py:moe")
    config = ml_collections.ConfigDict()
    config.name = name  # which member of the demo pair
    config.model = model_config(
        vocab_size=259,  # seqio.ByteVocabulary: 3 special ids + 256 bytes
        d_model=32,
        n_layers=2,
        n_heads=1,
        head_dim=32,
        ffn_hidden=96,  # 3 · d_model, as in the paper
        experts=VARIANTS[name],
        top_k=1,
        # Capacity is computed per step over 32 × 128 = 4 k tokens (the paper: 65 k per micro-batch); at
        # CF 1.0 the small batch's load fluctuations drop 15–30 % of tokens here, so train at 1.5 (= eval).
        capacity_factor_train=1.5,
        scan_layers=False,  # 2 layers on a CPU: the layer loop steps ~10 % faster than nnx.scan (52 vs 47 ms)
    )
    config.data = data_config(
        task="gutenberg_poetry",  # the embedded public-domain corpus; prepares itself offline on first use
        vocab_path="bytes",  # UTF-8 bytes: a 259-row embedding keeps N_act small and tokens cheap
        seq_len=128,
    )
    config.train = train_config(
        steps=0,  # run by token budget
        tokens=10_000_000.0,  # 230 tokens per active parameter; ~2 min per model on a 2-core CPU
        batch_size=32,  # sequences per step (4,096 tokens)
        batch_ramp_tokens=(),  # no ramp-up at this size
        batch_ramp_sizes=(),
        warmup_tokens=500_000.0,  # 5 % of the run, then constant, then the last 20 % decays to 0
        learning_rate=1e-2,  # best of {5e-3, 1e-2, 2e-2} for both models at 10 M tokens (README); the paper's rule,
        # fitted on ≥ 79 M active parameters, would give 0.75 (dense) and 0.45 (E = 8) here
        eval_every=500,
        eval_batches=32,  # 32 × 32 × 128 = 131 k held-out bytes
        checkpoint_every=500,
    )
    config.mesh = mesh_config()  # device mesh: data (-1 = all devices) × fsdp × expert × tensor; e.g. --config.mesh.expert=4
    return config
