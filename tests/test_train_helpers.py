"""Stand-ins for the training tests: a tiny config and a fake data module honouring the data contract.

The fake stream is a deterministic function of (seed, position): a noisy counting sequence, so a
model can learn it (loss must fall) and resumption can be checked exactly.
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np

VOCAB = 64


class FakeVocabulary:
    vocab_size = VOCAB
    eos_id = 1

    def decode(self, ids):
        return " ".join(map(str, ids))


def _window(seed: int, index: int, seq_len: int) -> np.ndarray:
    """Window `index` of the stream: x[t+1] = x[t] + 1 (mod V) with 10 % random tokens. [S + 1] int32."""
    rng = np.random.default_rng([seed, index])
    start = rng.integers(2, VOCAB)
    seq = (start + np.arange(seq_len + 1)) % (VOCAB - 2) + 2
    noise = rng.random(seq_len + 1) < 0.1
    seq[noise] = rng.integers(2, VOCAB, noise.sum())
    return seq.astype(np.int32)


def _batch(seed: int, first: int, size: int, seq_len: int) -> dict:
    rows = np.stack([_window(seed, first + i, seq_len) for i in range(size)])  # [b, S + 1]
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "weights": np.ones((size, seq_len), np.float32)}


class FakeIterator:
    delay_s = 0.0  # seconds to sleep per batch: keeps a child process alive long enough to be killed mid-run

    def __init__(self, data_cfg, process_index=0, process_count=1):
        self.cfg, self.pos = data_cfg, 0
        self.process_index, self.process_count = process_index, process_count

    def next_batch(self, global_batch_size: int) -> dict:
        b = global_batch_size // self.process_count
        time.sleep(self.delay_s)
        out = _batch(self.cfg.seed, self.pos + self.process_index * b, b, self.cfg.seq_len)
        self.pos += global_batch_size
        return out

    def get_state(self) -> dict:
        return {"pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.pos = int(state["pos"])


class FakeData:
    """Implements get_vocabulary / make_train_iterator / make_eval_batches like moe_jax.data."""

    @staticmethod
    def get_vocabulary(data_cfg):
        return FakeVocabulary()

    @staticmethod
    def make_train_iterator(data_cfg, split="train", process_index=0, process_count=1):
        return FakeIterator(data_cfg, process_index, process_count)

    @staticmethod
    def make_eval_batches(data_cfg, batch_size, num_batches, process_index=0, process_count=1):
        return [_batch(10_000 + data_cfg.seed, 10**6 + i * batch_size, batch_size, data_cfg.seq_len)
                for i in range(num_batches)]


def tiny_config(experts: int = 4, **train_overrides) -> ml_collections.ConfigDict:
    """A model of ~30 K active params on the fake data; a few steps take seconds on CPU."""
    from moe_jax.data.config import data_config
    from moe_jax.model.config import model_config
    from moe_jax.train.config import train_config

    config = ml_collections.ConfigDict()
    config.model = model_config(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, head_dim=16,
                                ffn_hidden=96, experts=experts)
    config.data = data_config(task="fixture", seq_len=16, seed=3)
    train = dict(steps=12, batch_size=8, batch_ramp_tokens=(256.0,), batch_ramp_sizes=(4,), learning_rate=1e-2,
                 warmup_tokens=128.0, eval_every=5, eval_batches=2, eval_batch_size=8, checkpoint_every=4,
                 keep_checkpoints=2, log_every=1, tensorboard=False, progress="none", measure_mfu=False)
    train.update(train_overrides)
    config.train = train_config(**train)
    return config


def kept_buffers(state) -> list[str]:
    """Paths of the arrays in `state` still alive (not deleted): after a donating step, what was not donated."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return [jax.tree_util.keystr(path) for path, x in flat if not x.is_deleted()]


def assert_resumed(summary: dict, total_steps: int = 12) -> None:
    """The restarted process restored a checkpoint (step N > 0) and trained fewer steps than a full run."""
    assert 0 < summary["start_step"] < total_steps, summary["start_step"]
    assert summary["steps"] == total_steps


def fixture_config(data_dir, **train_overrides) -> ml_collections.ConfigDict:
    """`tiny_config` on the real data pipeline: the committed fixture corpus, 2 k SentencePiece vocabulary."""
    from moe_jax.data.config import data_config

    config = tiny_config(**train_overrides)
    config.model.vocab_size = 2048
    config.data = data_config(task="fixture", seq_len=16, seed=3, builtin_vocab_size=2048, data_dir=str(data_dir))
    return config


def slow_down_real_data(delay_s: float) -> None:
    """Make moe_jax.data's train iterators sleep per batch (a child process stays killable mid-run)."""
    import moe_jax.data as data

    make = data.make_train_iterator

    def make_slow(*args, **kwargs):
        iterator = make(*args, **kwargs)
        next_batch = iterator.next_batch

        def slow_next_batch(size):
            time.sleep(delay_s)
            return next_batch(size)

        iterator.next_batch = slow_next_batch
        return iterator

    data.make_train_iterator = make_slow
