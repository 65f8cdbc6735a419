"""GPT-2 byte-level BPE as a seqio.Vocabulary, read from OpenAI's `encoder.json` + `vocab.bpe` files.

The paper tokenizes FineWeb-Edu with GPT-2's BPE (V = 50257, eos '<|endoftext|>' = 50256). No BPE files
ship with this repository and nothing downloads them: point data.vocab_path at a directory holding them.
Encoding runs in Python (inside the seqio graph via tf.numpy_function); it is used once, when the token
cache is built, so its speed does not limit training.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import regex
import seqio
import tensorflow as tf

from moe_jax.errors import ConfigError

EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other symbols, whitespace (a leading space sticks).
_PRETOKEN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Byte → printable unicode char: printable Latin-1 bytes map to themselves, the rest to 256, 257, …"""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _read_bpe_files(directory: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """encoder.json (token → id) and the merge pairs of vocab.bpe; a one-line ConfigError if they are not that."""
    where = f"data.vocab_path={directory!r}"
    try:
        with tf.io.gfile.GFile(f"{directory}/encoder.json") as f:
            encoder = json.load(f)
        with tf.io.gfile.GFile(f"{directory}/vocab.bpe") as f:
            lines = [ln for ln in f.read().split("\n")[1:] if ln.strip()]  # first line: version header
    except (tf.errors.NotFoundError, json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{where}: needs GPT-2's encoder.json and vocab.bpe ({reason})") from None
    if not isinstance(encoder, dict) or not all(isinstance(i, int) for i in encoder.values()):
        raise ConfigError(f"{where}: encoder.json must map each token to an integer id, as GPT-2's does")
    merges = [tuple(ln.split()) for ln in lines]
    bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
    if bad is not None:
        raise ConfigError(f"{where}: vocab.bpe line {bad + 2} is {lines[bad]!r}; each merge line holds two pieces")
    return encoder, merges


class Gpt2BpeVocabulary(seqio.Vocabulary):
    """seqio vocabulary over GPT-2 BPE files in `directory` (encoder.json, vocab.bpe)."""

    def __init__(self, directory: str):
        self._encoder, merges = _read_bpe_files(directory)
        self._ranks = {pair: i for i, pair in enumerate(merges)}
        self._decoder = {i: t for t, i in self._encoder.items()}
        self._byte_enc = byte_alphabet()
        self._byte_dec = {c: b for b, c in self._byte_enc.items()}
        self._directory = directory
        if EOT not in self._encoder:
            raise ConfigError(f"data.vocab_path={directory!r}: encoder.json has no {EOT!r} token")
        super().__init__(extra_ids=0)

    @property
    def eos_id(self) -> int:
        return self._encoder[EOT]

    @property
    def unk_id(self) -> None:
        return None  # byte-level: every string is representable

    @property
    def _base_vocab_size(self) -> int:
        return len(self._encoder)

    @functools.lru_cache(maxsize=65536)  # noqa: B019  (word → pieces cache, as GPT-2 does)
    def _bpe(self, word: str) -> tuple[str, ...]:
        parts = list(word)
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def _encode(self, s: str) -> list[int]:
        ids = []
        for word in _PRETOKEN.findall(s):
            mapped = "".join(self._byte_enc[b] for b in word.encode("utf-8"))
            ids.extend(self._encoder[piece] for piece in self._bpe(mapped))
        return ids

    def _decode(self, ids) -> str:
        text = "".join(self._decoder[int(i)] for i in ids if int(i) in self._decoder)
        return bytes(self._byte_dec[c] for c in text).decode("utf-8", errors="replace")

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        ids = tf.numpy_function(lambda b: np.asarray(self._encode(b.item().decode("utf-8")), np.int32),
                                [s], tf.int32, stateful=False)
        return tf.ensure_shape(ids, [None])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        text = tf.numpy_function(lambda x: self._decode(x.tolist()).encode("utf-8"), [ids], tf.string,
                                 stateful=False)
        return tf.ensure_shape(text, [])

    def __eq__(self, other) -> bool:
        return isinstance(other, Gpt2BpeVocabulary) and other._directory == self._directory

    def __hash__(self) -> int:
        return hash(self._directory)
