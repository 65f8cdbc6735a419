"""A small MoE LM that trains on CPU in minutes: d 128, 4 layers, 2 heads of 64, E = 8, 8k vocab.

    moe-jax model-info --config configs/tiny.py [--config.model.experts=1]
"""

import ml_collections

from moe_jax.model.config import model_config


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
    return config
