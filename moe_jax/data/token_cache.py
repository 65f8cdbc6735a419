"""Tokenize a split once through its seqio Task and keep the token stream as a flat file + JSON manifest.

Layout: <data_dir>/tokens/<task>/<vocab fingerprint>-h<heldout threshold>/<split>.bin (uint16 if the
vocabulary fits, else int32) and <split>.json. Documents appear in corpus order, each followed by EOS.
Batches then memory-map this file, so serving is a gather, and resuming is a position. For corpora far
larger than a run needs (c4_en, fineweb_edu), data.max_cache_tokens caches only a prefix of the split.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from moe_jax.data import corpus
from moe_jax.data.config import ensure_writable_dir, resolved_data_dir, validate_data_config
from moe_jax.errors import UserError

MANIFEST_VERSION = 2  # 2: the fingerprint includes a sha256 of the token stream


def cache_dir(data_cfg) -> Path:
    from moe_jax.data.vocab import vocab_fingerprint  # noqa: PLC0415

    threshold = round(data_cfg.heldout_fraction * corpus.HASH_BUCKETS)
    limit = f"-max{data_cfg.max_cache_tokens}" if data_cfg.max_cache_tokens else ""
    return (resolved_data_dir(data_cfg) / "tokens" / data_cfg.task
            / f"{vocab_fingerprint(data_cfg)}-h{threshold}{limit}")


def build_token_cache(data_cfg, split: str) -> dict:
    """Run the seqio Task over the whole split and write <split>.bin and <split>.json; returns the manifest."""
    from moe_jax.data.tasks import document_dataset  # noqa: PLC0415  (imports TensorFlow)
    from moe_jax.data.vocab import get_vocabulary, vocab_fingerprint  # noqa: PLC0415

    vocab = get_vocabulary(data_cfg)
    dtype = np.uint16 if vocab.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    out = ensure_writable_dir(data_cfg, cache_dir(data_cfg))
    tmp = out / f"{split}.bin.tmp{os.getpid()}"
    start, n_docs, n_tokens = time.perf_counter(), 0, 0
    digest = hashlib.sha256()  # of the exact token stream: a re-prepared, different cache never matches a saved state
    with open(tmp, "wb") as f:
        for example in document_dataset(data_cfg, split).as_numpy_iterator():
            ids = example["targets"]  # [len(doc)+1] int32, EOS last
            chunk = ids.astype(dtype).tobytes()
            f.write(chunk)
            digest.update(chunk)
            n_docs += 1
            n_tokens += ids.size
            if data_cfg.max_cache_tokens and n_tokens >= data_cfg.max_cache_tokens:
                break  # a prefix of whole documents: enough for the run's token budget
    if n_tokens < 2:
        tmp.unlink()
        raise UserError(f"split {split!r} of task {data_cfg.task!r} is empty (heldout_fraction="
                        f"{data_cfg.heldout_fraction}); use a larger corpus or fraction")
    manifest = dict(version=MANIFEST_VERSION, task=data_cfg.task, split=split, n_docs=n_docs,
                    n_tokens=n_tokens, dtype=np.dtype(dtype).name, vocab_size=vocab.vocab_size,
                    eos_id=vocab.eos_id, vocab_fingerprint=vocab_fingerprint(data_cfg),
                    heldout_fraction=data_cfg.heldout_fraction,
                    max_cache_tokens=data_cfg.max_cache_tokens, seconds=round(time.perf_counter() - start, 2),
                    sha256=digest.hexdigest(),
                    fingerprint=f"{data_cfg.task}/{split}/{n_docs}/{n_tokens}/{vocab_fingerprint(data_cfg)}/"
                                f"{digest.hexdigest()[:16]}")
    os.replace(tmp, out / f"{split}.bin")
    (out / f"{split}.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _current(manifest_path: Path) -> bool:
    """True if a manifest exists and was written by this cache format (older ones are rebuilt)."""
    try:
        return json.loads(manifest_path.read_text()).get("version") == MANIFEST_VERSION
    except (OSError, ValueError):
        return False


def load_tokens(data_cfg, split: str) -> tuple[np.ndarray, dict]:
    """Memory-mapped token stream [T] and manifest of a split, building the cache on first use."""
    validate_data_config(data_cfg)
    out = cache_dir(data_cfg)
    manifest_path = out / f"{split}.json"
    if not _current(manifest_path):  # a complete cache is only read: a read-only data_dir serves it
        ensure_writable_dir(data_cfg, out)
        with open(out / f".{split}.lock", "w") as lock:  # one builder per cache, other processes wait
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _current(manifest_path):
                build_token_cache(data_cfg, split)
    manifest = json.loads(manifest_path.read_text())
    tokens = np.memmap(out / f"{split}.bin", dtype=manifest["dtype"], mode="r")
    if tokens.size != manifest["n_tokens"]:
        raise UserError(f"token cache {out / (split + '.bin')} has {tokens.size} tokens, manifest says "
                        f"{manifest['n_tokens']}: delete {out} to rebuild it")
    return tokens, manifest
