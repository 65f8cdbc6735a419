"""seqio Tasks: the one path text takes from a tfds dataset to token ids.

Per (config, split) we build a `seqio.Task` over a `seqio.TfdsDataSource`:
    tfds {id, text, bucket} → keep split by bucket → rekey text→targets → tokenize → append EOS.
Tasks are built per config (data_dir and vocabulary are config values) rather than taken from the global
registry; `register_default_tasks()` adds 'moe_jax.<task>.<split>' with default settings for discovery.
"""

from __future__ import annotations

import fcntl
import functools
import sys
from pathlib import Path

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from moe_jax.data import corpus
from moe_jax.data.config import ensure_writable_dir, resolved_data_dir
from moe_jax.data.tfds_builders import BUILDERS, check_fineweb_shards
from moe_jax.data.vocab import get_vocabulary
from moe_jax.errors import UserError

SPLITS = ("train", "heldout")
C4_NAME = "c4/en:3.1.0"


def tfds_dir(data_cfg) -> Path:
    return resolved_data_dir(data_cfg) / "tfds"


def _builder(data_cfg):
    cls = BUILDERS[data_cfg.task]
    kwargs = {"source_path": data_cfg.fineweb_path} if data_cfg.task == "fineweb_edu" else {}
    return cls(data_dir=str(tfds_dir(data_cfg)), **kwargs)


def prepare_command(data_cfg) -> str:
    extra = f" --fineweb-path {data_cfg.fineweb_path}" if data_cfg.task == "fineweb_edu" else ""
    return f"moe-jax data prepare --task {data_cfg.task} --data-dir {resolved_data_dir(data_cfg)}{extra}"


def prepare_tfds(data_cfg) -> Path:
    """Build the task's local tfds dataset if it is not there yet (offline; c4_en is never built here)."""
    if data_cfg.task == "c4_en":
        raise UserError("c4_en is read from an existing tfds c4/en directory (data.c4_data_dir); prepare it "
                        "with tfds' own c4 builder (Apache Beam) — moe-jax never downloads it")
    if data_cfg.task == "fineweb_edu":
        check_fineweb_shards(data_cfg.fineweb_path)
    builder = _builder(data_cfg)
    root = ensure_writable_dir(data_cfg, tfds_dir(data_cfg))
    with open(root / f".{data_cfg.task}.lock", "w") as lock:  # concurrent test processes: build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not builder.is_prepared():
            if data_cfg.task == "fixture":
                tfds.disable_progress_bar()  # seconds-long build inside tests: keep their output clean
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return Path(builder.data_dir)


def ensure_tfds(data_cfg) -> None:
    """Built-in corpora (fixture, gutenberg_poetry) build offline on first use; others: a UserError naming
    the command that prepares them (fineweb_edu may be huge; c4_en is never built here)."""
    if data_cfg.task in ("fixture", "gutenberg_poetry"):
        if data_cfg.task == "gutenberg_poetry" and not _builder(data_cfg).is_prepared():
            print(f"moe_jax.data: preparing gutenberg_poetry under {tfds_dir(data_cfg)} (offline, once, "
                  "~2 min with tokenization)", file=sys.stderr)
        prepare_tfds(data_cfg)
        return
    if data_cfg.task == "c4_en":
        c4_dir = data_cfg.c4_data_dir or str(tfds_dir(data_cfg))
        if not tfds.builder(C4_NAME, data_dir=c4_dir).is_prepared():
            raise UserError(f"tfds {C4_NAME} not found under {c4_dir}: set data.c4_data_dir to a tfds data_dir "
                            "holding c4/en/3.1.0 (e.g. gs://bucket/tfds); nothing is downloaded automatically")
        return
    if not _builder(data_cfg).is_prepared():
        raise UserError(f"dataset {data_cfg.task!r} is not prepared under {tfds_dir(data_cfg)}: "
                        f"run `{prepare_command(data_cfg)}`")


def _select_split(dataset: tf.data.Dataset, heldout: bool, threshold: int) -> tf.data.Dataset:
    """Keep documents whose hash bucket is < threshold (heldout) or ≥ threshold (train)."""
    if heldout:
        return dataset.filter(lambda ex: ex["bucket"] < threshold)
    return dataset.filter(lambda ex: ex["bucket"] >= threshold)


def _source(data_cfg, split: str) -> seqio.TfdsDataSource:
    if data_cfg.task == "c4_en":  # c4 has its own held-out split
        return seqio.TfdsDataSource(C4_NAME, tfds_data_dir=data_cfg.c4_data_dir or str(tfds_dir(data_cfg)),
                                    splits={"train": "train", "heldout": "validation"})
    name = f"{BUILDERS[data_cfg.task].name}:{BUILDERS[data_cfg.task].VERSION}"
    return seqio.TfdsDataSource(name, tfds_data_dir=str(tfds_dir(data_cfg)), splits={split: "full"})


def build_task(data_cfg, split: str) -> seqio.Task:
    """The seqio Task producing {'id', 'targets': int32 tokens + EOS} for one split of `data_cfg.task`."""
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not valid; choose one of {SPLITS}")
    preprocessors = []
    if data_cfg.task != "c4_en":
        threshold = round(data_cfg.heldout_fraction * corpus.HASH_BUCKETS)
        preprocessors.append(functools.partial(_select_split, heldout=split == "heldout", threshold=threshold))
    key_map = {"targets": "text"} if data_cfg.task == "c4_en" else {"targets": "text", "id": "id"}
    preprocessors += [functools.partial(seqio.preprocessors.rekey, key_map=key_map),
                      seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
    features = {"targets": seqio.Feature(get_vocabulary(data_cfg), add_eos=True, dtype=tf.int32)}
    return seqio.Task(f"moe_jax.{data_cfg.task}.{split}", _source(data_cfg, split),
                      output_features=features, preprocessors=preprocessors)


def document_dataset(data_cfg, split: str) -> tf.data.Dataset:
    """Tokenized documents of a split in corpus order (deterministic, one epoch)."""
    ensure_tfds(data_cfg)
    task = build_task(data_cfg, split)
    return task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False, num_epochs=1)


def register_default_tasks() -> list[str]:
    """Register 'moe_jax.<task>.<split>' (default data config) in seqio.TaskRegistry; returns the names."""
    from moe_jax.data.config import data_config  # noqa: PLC0415

    names = []
    for task in ("fixture", "gutenberg_poetry", "c4_en"):
        for split in SPLITS:
            built = build_task(data_config(task=task, max_cache_tokens=1 if task == "c4_en" else 0), split)
            if built.name not in seqio.TaskRegistry.names():
                seqio.TaskRegistry.add_provider(built.name, built)
            names.append(built.name)
    return names
