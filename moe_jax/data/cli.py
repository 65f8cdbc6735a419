"""`moe-jax data prepare|inspect`: build datasets, token caches and vocabularies; look at real batches."""

from __future__ import annotations

import argparse
import json
import time

from moe_jax.errors import UserError

_ACTIONS = ("prepare", "inspect")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moe_jax.data.config import TASKS  # noqa: PLC0415

    parser.add_argument("action", choices=_ACTIONS, help="prepare: build tfds dataset + token caches "
                        "(+ vocabulary with --vocab-size); inspect: print batches and pipeline speed")
    parser.add_argument("--task", default="gutenberg_poetry", choices=TASKS, help="dataset (default %(default)s)")
    parser.add_argument("--data-dir", default="", help="data directory (default $MOE_JAX_DATA_DIR or "
                        "~/.cache/moe_jax/data)")
    parser.add_argument("--vocab-size", type=int, default=None, help="prepare: retrain the SentencePiece "
                        "model of this size on the default corpus's train split; both: use that vocabulary")
    parser.add_argument("--vocab-path", default="", help="a SentencePiece *.model, a GPT-2 BPE directory or 'bytes'")
    parser.add_argument("--fineweb-path", default="", help="FineWeb-Edu shards (task fineweb_edu)")
    parser.add_argument("--c4-data-dir", default="", help="tfds data_dir holding c4/en (task c4_en)")
    parser.add_argument("--max-cache-tokens", type=int, default=0, help="cache only ~N tokens per split "
                        "(required for c4_en; 0 = whole split)")
    parser.add_argument("--split", default="train", choices=("train", "heldout"), help="inspect: split")
    parser.add_argument("--batches", type=int, default=20, help="inspect: batches to time (default 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="inspect: global batch size (default 32)")
    parser.add_argument("--seq-len", type=int, default=512, help="window length (default 512)")
    parser.add_argument("--json", action="store_true", help="inspect: print one JSON object")


def _config(args):
    from moe_jax.data.config import BUILTIN_VOCAB_SIZES, data_config  # noqa: PLC0415
    from moe_jax.data.vocab import builtin_vocab_path  # noqa: PLC0415

    vocab_path, builtin = args.vocab_path, 8192
    if args.vocab_size is not None:
        if args.vocab_size in BUILTIN_VOCAB_SIZES:
            builtin = args.vocab_size
        elif not vocab_path:
            vocab_path = str(builtin_vocab_path(args.vocab_size))
    return data_config(task=args.task, data_dir=args.data_dir, vocab_path=vocab_path, builtin_vocab_size=builtin,
                       fineweb_path=args.fineweb_path, c4_data_dir=args.c4_data_dir, seq_len=args.seq_len,
                       max_cache_tokens=args.max_cache_tokens)


def prepare(cfg, vocab_size: int | None) -> dict:
    """Optionally retrain the vocabulary, build the tfds dataset, tokenize both splits; returns timings."""
    from moe_jax.data import tasks, token_cache, vocab  # noqa: PLC0415

    timings: dict = {}
    if vocab_size is not None:
        start = time.perf_counter()
        out = vocab.train_default_vocab(vocab_size)
        timings["vocab"] = dict(path=str(out), seconds=round(time.perf_counter() - start, 1))
    if cfg.task != "c4_en":
        start = time.perf_counter()
        timings["tfds"] = dict(path=str(tasks.prepare_tfds(cfg)), seconds=round(time.perf_counter() - start, 1))
    for split in tasks.SPLITS:
        start = time.perf_counter()
        _, manifest = token_cache.load_tokens(cfg, split)
        timings[split] = dict(n_docs=manifest["n_docs"], n_tokens=manifest["n_tokens"],
                              seconds=round(time.perf_counter() - start, 1))
    return timings


def inspect(cfg, split: str, batches: int, batch_size: int) -> dict:
    """Shapes, token counts, a decoded sample and tokens/s of `batches` batches of a split."""
    from moe_jax.data.batches import make_train_iterator  # noqa: PLC0415
    from moe_jax.data.token_cache import load_tokens  # noqa: PLC0415
    from moe_jax.data.vocab import get_vocabulary  # noqa: PLC0415

    if batches < 1 or batch_size < 1:
        raise UserError(f"--batches={batches} and --batch-size={batch_size} must be positive")
    _, manifest = load_tokens(cfg, split)
    it = make_train_iterator(cfg, split=split)
    start = time.perf_counter()
    for _ in range(batches):
        batch = it.next_batch(batch_size)
    seconds = time.perf_counter() - start
    vocab = get_vocabulary(cfg)
    return dict(task=cfg.task, split=split, n_docs=manifest["n_docs"], n_tokens=manifest["n_tokens"],
                vocab_size=vocab.vocab_size, num_windows=it.num_windows,
                shapes={k: [list(v.shape), str(v.dtype)] for k, v in batch.items()},
                eos_in_last_batch=int((batch["inputs"] == vocab.eos_id).sum()),
                tokens_per_second=round(batches * batch_size * cfg.seq_len / seconds),
                sample=vocab.decode(batch["inputs"][0].tolist())[:400], state=it.get_state())


def _check_vocabulary(cfg, retrain_size: int | None) -> None:
    """Bad vocabulary input fails here, before any data directory is touched: the size to retrain, or the
    vocabulary the config names (loaded once)."""
    from moe_jax.data.vocab import check_sentencepiece_size, get_vocabulary  # noqa: PLC0415

    if retrain_size is not None:
        check_sentencepiece_size(retrain_size)
    else:
        get_vocabulary(cfg)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from moe_jax.cli import reject_extra  # noqa: PLC0415

    reject_extra(extra)
    cfg = _config(args)
    retrain = args.vocab_size if args.action == "prepare" and not args.vocab_path else None
    _check_vocabulary(cfg, retrain)
    if args.action == "prepare":
        start = time.perf_counter()
        timings = prepare(cfg, retrain)
        timings["total_seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(timings, indent=1))
        return 0
    report = inspect(cfg, args.split, args.batches, args.batch_size)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"task {report['task']} split {report['split']}: {report['n_docs']:,} documents, "
          f"{report['n_tokens']:,} tokens, {report['num_windows']:,} windows of {cfg.seq_len}, "
          f"vocab {report['vocab_size']}")
    for key, (shape, dtype) in report["shapes"].items():
        print(f"  {key:<8} {shape} {dtype}")
    print(f"pipeline: {report['tokens_per_second']:,} tokens/s over {args.batches} batches of {args.batch_size}")
    print(f"state: {json.dumps(report['state'])}")
    print("sample (inputs[0], decoded):\n" + report["sample"])
    return 0

