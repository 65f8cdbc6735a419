"""moe_jax.data: seqio tasks over tfds, vocabularies, deterministic resumable batches.

Public interface (imports TensorFlow lazily, on first call):
    data_config(**overrides), validate_data_config(cfg)
    get_vocabulary(data_cfg) -> seqio.Vocabulary
    make_train_iterator(data_cfg, split='train', process_index=0, process_count=1) -> WindowIterator
    make_eval_batches(data_cfg, batch_size, num_batches) -> list[dict]
"""

from moe_jax.data.batches import WindowIterator, make_eval_batches, make_train_iterator
from moe_jax.data.config import data_config, validate_data_config
from moe_jax.data.vocab import get_vocabulary

__all__ = ["WindowIterator", "data_config", "get_vocabulary", "make_eval_batches", "make_train_iterator",
           "validate_data_config"]
