"""Vocabularies: the committed SentencePiece models, user SentencePiece files, a GPT-2 BPE adapter, bytes.

The committed models (`moe_jax/data/vocab/gutenberg_poetry_{8192,2048}.model`) are unigram SentencePiece
models trained by `train_sentencepiece` on a fixed subsample of the default corpus's train split with T5's
id layout (pad 0, eos 1, unk 2, no bos), byte fallback (no text is unrepresentable) and '\n' as its own piece.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterable

from moe_jax.errors import ConfigError, UserError

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
GPT2_FILES = ("encoder.json", "vocab.bpe")
BYTES = "bytes"  # data.vocab_path value selecting seqio.ByteVocabulary (UTF-8 bytes; 259 ids with pad/eos/unk)
MIN_SENTENCEPIECE_SIZE = 256 + 3 + 1  # byte fallback pieces, pad/eos/unk, '\n': any smaller model cannot train
TRAIN_SAMPLE_LINES = 300_000  # lines of the train split fed to SentencePiece (a fixed, evenly strided subsample)


def builtin_vocab_path(size: int) -> Path:
    return VOCAB_DIR / f"gutenberg_poetry_{size}.model"


def vocab_file(data_cfg) -> Path | str:
    """The vocabulary file or directory a data config selects (committed model if vocab_path is '')."""
    return data_cfg.vocab_path or builtin_vocab_path(data_cfg.builtin_vocab_size)


def vocab_fingerprint(data_cfg) -> str:
    """sha256 (first 16 hex) of the vocabulary's bytes: token caches are keyed by it."""
    path = str(vocab_file(data_cfg))
    if path == BYTES:  # no file: the id layout is fixed by seqio (3 special ids, then the 256 byte values)
        return hashlib.sha256(b"seqio.ByteVocabulary/3+256").hexdigest()[:16]
    if "://" in path:  # remote (gs://...): TensorFlow's gfile reads it
        import tensorflow as tf  # noqa: PLC0415

        isdir, opener = tf.io.gfile.isdir, tf.io.gfile.GFile
    else:  # local: no TensorFlow import, so serving cached tokens stays light
        isdir, opener = os.path.isdir, open
        if not os.path.exists(path):
            raise ConfigError(f"data.vocab_path: vocabulary {path} does not exist")
    digest = hashlib.sha256()
    for name in [f"{path}/{n}" for n in GPT2_FILES] if isdir(path) else [path]:
        with opener(name, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def get_vocabulary(data_cfg):
    """seqio.Vocabulary of a data config: SentencePiece for *.model files, GPT-2 BPE for a directory,
    UTF-8 bytes for 'bytes'."""
    import seqio  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    path = str(vocab_file(data_cfg))
    if path == BYTES:
        return seqio.ByteVocabulary()
    if not tf.io.gfile.exists(path):
        hint = " (run `moe-jax data prepare --vocab-size N` to rebuild)" if not data_cfg.vocab_path else ""
        raise ConfigError(f"data.vocab_path: vocabulary {path} does not exist{hint}")
    if tf.io.gfile.isdir(path):
        from moe_jax.data.gpt2_bpe import Gpt2BpeVocabulary  # noqa: PLC0415

        return Gpt2BpeVocabulary(path)
    if not path.endswith(".model"):
        raise ConfigError(f"data.vocab_path={path!r}: expected a SentencePiece *.model file or a directory "
                          "holding GPT-2's encoder.json and vocab.bpe")
    return _loaded_sentencepiece(path)


def _loaded_sentencepiece(path: str):
    """seqio.SentencePieceVocabulary with its model parsed now, so a file that is no model is a ConfigError
    here rather than a traceback from inside the tokenizer."""
    import seqio  # noqa: PLC0415
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    vocab = seqio.SentencePieceVocabulary(path)
    try:
        vocab.vocab_size  # noqa: B018 - parses the model proto and loads the processor
    except (DecodeError, RuntimeError, ValueError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"data.vocab_path={path!r} is not a SentencePiece model ({reason}); give a *.model "
                          "file written by SentencePiece, a GPT-2 BPE directory or 'bytes'") from None
    return vocab


def check_sentencepiece_size(vocab_size: int) -> int:
    """A vocabulary size SentencePiece can train with our settings, else a one-line UserError."""
    if vocab_size < MIN_SENTENCEPIECE_SIZE:
        raise UserError(f"--vocab-size {vocab_size} is too small: a SentencePiece model with byte fallback needs "
                        f"at least {MIN_SENTENCEPIECE_SIZE} pieces (256 bytes, pad/eos/unk, newline); "
                        "use e.g. 2048 or 8192")
    return vocab_size


def train_sentencepiece(lines: Iterable[str], vocab_size: int, out_path: Path) -> Path:
    """Train a unigram SentencePiece model deterministically (one thread, input order kept) to `out_path`."""
    import sentencepiece as spm  # noqa: PLC0415

    check_sentencepiece_size(vocab_size)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, character_coverage=0.9999,
            user_defined_symbols=["\n"], normalization_rule_name="nmt_nfkc", num_threads=1,
            shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2)
    except RuntimeError as err:  # e.g. "Vocabulary size is smaller than required_chars. 300 vs 390."
        reason = str(err).splitlines()[0].rsplit("] ", 1)[-1].split(" Increase")[0].strip()
        raise UserError(f"--vocab-size {vocab_size} does not fit this corpus: SentencePiece says {reason!r}; "
                        "use e.g. 2048 or 8192") from None
    out_path = Path(out_path)
    tmp = out_path.with_name(f"{out_path.name}.tmp{os.getpid()}")
    try:  # through a temporary file: a failed write never truncates the model already there
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, out_path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write the vocabulary {out_path}: {err.strerror}") from None
    return out_path


def strided_sample(lines: list[str], max_lines: int = TRAIN_SAMPLE_LINES) -> list[str]:
    """Every k-th non-empty line so that at most `max_lines` remain (deterministic)."""
    lines = [ln for ln in lines if ln.strip()]
    step = max(1, -(-len(lines) // max_lines))
    return lines[::step]


def train_default_vocab(vocab_size: int, out_path: Path | None = None) -> Path:
    """Retrain the committed model of `vocab_size` from the default corpus's train split (1 % held out)."""
    from moe_jax.data import corpus  # noqa: PLC0415

    lines = [ln for doc_id, text in corpus.corpus_documents("gutenberg_poetry")
             if not corpus.is_heldout(corpus.heldout_bucket(doc_id), 0.01) for ln in text.split("\n")]
    return train_sentencepiece(strided_sample(lines), vocab_size, out_path or builtin_vocab_path(vocab_size))
