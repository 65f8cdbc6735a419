"""Benchmark: data pipeline tokens/s ÷ tiny-model training tokens/s, both measured in this one run.

    python bench/data.py [--data-dir DIR] [--task gutenberg_poetry] [--seconds 3] [--train-steps 20]

The pipeline is timed as the training loop uses it (`next_batch` on the memory-mapped token cache of the
train split, at the tiny config's batch size and window length); training is the tiny config's jitted
train step on a fixed batch (compile excluded); also printed: the one-off cold path (text → seqio Task →
token cache) on the fixture. Target: ratio ≥ 20, so data never limits training.
On a shared machine both numbers are noisy; the ratio is measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pipeline_tokens_per_second(data_cfg, batch_size: int, seconds: float) -> dict:
    from moe_jax.data import make_train_iterator

    start = time.perf_counter()
    it = make_train_iterator(data_cfg)
    setup = time.perf_counter() - start
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        it.next_batch(batch_size)
        n += 1
    elapsed = time.perf_counter() - start
    return dict(tokens_per_s=n * batch_size * data_cfg.seq_len / elapsed, batches=n, setup_s=setup)


def tokenize_tokens_per_second(seq_len: int) -> dict:
    """Cold path: the fixture's train split through its seqio Task into a fresh token cache."""
    import tempfile

    from moe_jax.data import data_config
    from moe_jax.data.tasks import prepare_tfds
    from moe_jax.data.token_cache import build_token_cache

    with tempfile.TemporaryDirectory() as tmp:
        cfg = data_config(task="fixture", data_dir=tmp, seq_len=seq_len)
        prepare_tfds(cfg)
        start = time.perf_counter()
        manifest = build_token_cache(cfg, "train")
        return dict(tokens_per_s=manifest["n_tokens"] / (time.perf_counter() - start), tokens=manifest["n_tokens"])


def train_tokens_per_second(config, steps: int) -> dict:
    import jax
    from flax import nnx

    from moe_jax.model import build_model
    from moe_jax.train.optimizer import make_optimizer
    from moe_jax.train.steps import make_train_step

    m, d, t = config.model, config.data, config.train
    graphdef, params, rest = nnx.split(build_model(m, nnx.Rngs(0)), nnx.Param, ...)
    optimizer = make_optimizer(t)
    state = {"params": params, "opt_state": optimizer.init(params), "rng": jax.random.key_data(jax.random.key(0))}
    step = make_train_step(graphdef, rest, optimizer)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, m.vocab_size, (t.batch_size, d.seq_len + 1), dtype=np.int32)
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], weights=np.ones((t.batch_size, d.seq_len), np.float32))
    state, out = step(state, batch, np.float32(1e-3))  # compile
    jax.block_until_ready(out["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        state, out = step(state, batch, np.float32(1e-3))
    jax.block_until_ready(out["loss"])
    elapsed = time.perf_counter() - start
    return dict(tokens_per_s=steps * t.batch_size * d.seq_len / elapsed, steps=steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="gutenberg_poetry")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--seconds", type=float, default=3.0, help="pipeline timing window")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from moe_jax.configlib import load_config

    config = load_config(str(ROOT / "configs" / "tiny.py"), [])
    config.data.task, config.data.data_dir = args.task, args.data_dir
    bs, seq = config.train.batch_size, config.data.seq_len
    data = pipeline_tokens_per_second(config.data, bs, args.seconds)
    cold = tokenize_tokens_per_second(seq)
    train = train_tokens_per_second(config, args.train_steps)
    result = dict(task=args.task, batch_size=bs, seq_len=seq, pipeline=data, tokenize=cold, train=train,
                  ratio=data["tokens_per_s"] / train["tokens_per_s"], target=20.0,
                  tokenize_ratio=cold["tokens_per_s"] / train["tokens_per_s"],
                  load_average=os.getloadavg(), cpus=os.cpu_count())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"tiny config: batch {bs} x seq {seq}, task {args.task}")
        print(f"pipeline : {data['tokens_per_s']:>14,.0f} tokens/s ({data['batches']} batches; "
              f"iterator setup {data['setup_s']:.2f} s)")
        print(f"tokenize : {cold['tokens_per_s']:>14,.0f} tokens/s (cold path, once per split: fixture text through its "
              f"seqio Task into a token cache, incl. tf.data start-up; {result['tokenize_ratio']:.0f} x training)")
        print(f"training : {train['tokens_per_s']:>14,.0f} tokens/s ({train['steps']} jitted tiny-model steps)")
        print(f"ratio    : {result['ratio']:>14,.0f} x   (target >= 20 x)   "
              f"load average {result['load_average'][0]:.1f} on {result['cpus']} CPUs")
    return 0 if result["ratio"] >= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
