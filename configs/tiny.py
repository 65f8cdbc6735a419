"""A small MoE LM that trains on CPU in minutes: d 128, 4 layers, 2 heads of 64, E = 8, 8k vocab.

    moe-jax model-info --config configs/tiny.py [--config.model.experts=1]
    moe-jax train --config configs/tiny.py --workdir runs/tiny [--config.train.steps=100]
"""

import ml_collections

from moe_jax.data.config import data_config
from moe_jax.model.config import model_config
from moe_jax.parallel.mesh import mesh_config
from moe_jax.train.config import train_config


def get_config(arg=None):
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(
        vocab_size=8192,  # the data helper's default SentencePiece vocabulary
        d_model=128,
        n_layers=4,
        n_heads=2,
        head_dim=64,
        ffn_hidden=384,  # 3 · d_model
        experts=8,
        top_k=1,
    )
    config.data = data_config(
        task="gutenberg_poetry",  # the embedded public-domain corpus; prepares itself offline on first use
        seq_len=128,  # short windows keep a CPU step fast
    )
    config.train = train_config(
        steps=0,  # run by token budget (train.tokens)
        tokens=1_000_000.0,  # ~1 M tokens: minutes on a laptop CPU
        batch_size=16,  # sequences per step after the ramp-up
        batch_ramp_tokens=(100_000.0,),  # the paper's ramp in miniature: 8 sequences for the first 100 k tokens
        batch_ramp_sizes=(8,),
        warmup_tokens=50_000.0,  # linear warmup (5 % of the run)
        learning_rate=2e-3,  # the paper's rule, fitted on 79 M–2.7 B models, gives 0.015–0.025 here: diverges
        eval_every=100,  # held-out eval every 100 steps and at the end
        eval_batches=8,  # 8 × 16 sequences of held-out text
        checkpoint_every=100,  # async checkpoint every 100 steps and at the end
    )
    config.mesh = mesh_config()  # device mesh: data (-1 = all devices) × fsdp × expert × tensor; e.g. --config.mesh.expert=4
    return config
