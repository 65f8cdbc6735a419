"""`config.data`: which corpus, vocabulary, window length and seed the batches come from."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ml_collections

from moe_jax.errors import ConfigError, UserError
from moe_jax.paths import is_remote

TASKS = ("fixture", "gutenberg_poetry", "c4_en", "fineweb_edu")
BUILTIN_VOCAB_SIZES = (8192, 2048)
DATA_DIR_ENV = "MOE_JAX_DATA_DIR"


def default_data_dir() -> str:
    """$MOE_JAX_DATA_DIR if set, else ~/.cache/moe_jax/data."""
    return os.environ.get(DATA_DIR_ENV) or str(Path.home() / ".cache" / "moe_jax" / "data")


def data_config(**overrides) -> ml_collections.ConfigDict:
    """Defaults of `config.data`; keyword overrides must name existing fields."""
    cfg = ml_collections.ConfigDict()
    cfg.task = "gutenberg_poetry"  # one of TASKS; 'fixture' is a tiny self-preparing corpus for tests
    cfg.data_dir = ""  # prepared tfds datasets + token caches; '' = $MOE_JAX_DATA_DIR or ~/.cache/moe_jax/data
    cfg.vocab_path = ""  # '' = committed SentencePiece model of builtin_vocab_size; *.model = SentencePiece; dir with encoder.json+vocab.bpe = GPT-2 BPE; 'bytes' = UTF-8 bytes (259 ids)
    cfg.builtin_vocab_size = 8192  # which committed SentencePiece model vocab_path='' selects: 8192 or 2048
    cfg.seq_len = 512  # tokens per training window (inputs and targets each; the paper's context)
    cfg.seed = 0  # seed of the window order (one permutation per epoch)
    cfg.heldout_fraction = 0.01  # fraction of documents held out, chosen by a hash of the document id
    cfg.c4_data_dir = ""  # tfds data_dir holding c4/en (e.g. gs://bucket/tfds); '' = data_dir/tfds
    cfg.max_cache_tokens = 0  # tokenize only the first ~N tokens (whole documents) of a split; 0 = all (c4/fineweb: set it)
    cfg.fineweb_path = ""  # directory or glob of local FineWeb-Edu *.parquet / *.jsonl shards (task fineweb_edu)
    unknown = sorted(set(overrides) - set(cfg.keys()))
    if unknown:
        raise ConfigError(f"unknown data config field(s) {unknown}; valid: {sorted(cfg.keys())}")
    cfg.update(overrides)
    validate_data_config(cfg)
    return cfg


def resolved_data_dir(cfg) -> Path:
    """The data directory this config uses (default applied)."""
    return Path(os.path.expanduser(cfg.data_dir or default_data_dir()))


def _file_in_the_way(root: Path, file: Path) -> str:
    if file == root:
        return "is a file"
    if file in root.parents:
        return f"is under the file {file}"
    return f"holds the file {file} where a directory is needed"


def _probe_write(directory: Path) -> None:
    """Create and remove a temporary file in `directory` (OSError if it cannot be written)."""
    with tempfile.TemporaryFile(dir=directory):
        pass


def ensure_writable_dir(cfg, path: Path) -> Path:
    """Create `path` (under the config's data directory) if needed; a one-line UserError naming
    data.data_dir when it is a file, lies under a file or cannot be written. Nothing is removed."""
    root = resolved_data_dir(cfg)
    fix = f"choose a writable directory with --data-dir / data.data_dir (default {default_data_dir()})"
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"data.data_dir {root} {_file_in_the_way(root, parent)}; {fix}")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe_write(path)
    except OSError as err:
        reason = f"{err.strerror}: {err.filename or path}"
        raise UserError(f"data.data_dir {root} is not writable ({reason}); {fix}") from None
    return path


def validate_data_config(cfg) -> None:
    """Raise ConfigError naming the first invalid field of `config.data`."""
    if cfg.task not in TASKS:
        raise ConfigError(f"data.task={cfg.task!r} is not a known task; valid: {', '.join(TASKS)}")
    if not cfg.vocab_path and cfg.builtin_vocab_size not in BUILTIN_VOCAB_SIZES:
        raise ConfigError(
            f"data.builtin_vocab_size={cfg.builtin_vocab_size} has no committed model; valid: {BUILTIN_VOCAB_SIZES}"
            " (or set data.vocab_path)")
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < 1:
        raise ConfigError(f"data.seq_len={cfg.seq_len!r} must be a positive integer")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"data.seed={cfg.seed!r} must be a non-negative integer")
    if not isinstance(cfg.max_cache_tokens, int) or cfg.max_cache_tokens < 0:
        raise ConfigError(f"data.max_cache_tokens={cfg.max_cache_tokens!r} must be an integer >= 0 (0 = whole split)")
    if not 0.0 < float(cfg.heldout_fraction) < 0.5:
        raise ConfigError(f"data.heldout_fraction={cfg.heldout_fraction!r} must be in (0, 0.5)")
    if cfg.task == "c4_en" and not cfg.max_cache_tokens:
        raise ConfigError("data.task='c4_en' needs data.max_cache_tokens > 0 (tokens to cache from its 156 B; "
                          "e.g. the run's token budget): the whole split would take days to tokenize")
    if is_remote(cfg.data_dir):
        raise ConfigError(f"data.data_dir={cfg.data_dir!r} must be on the local disk: token caches are memory-mapped "
                          f"files (data.vocab_path and data.fineweb_path may be gs:// paths)")
    if cfg.task == "fineweb_edu" and not cfg.fineweb_path:
        raise ConfigError("data.task='fineweb_edu' needs data.fineweb_path = a directory or glob of "
                          "FineWeb-Edu *.parquet/*.jsonl shards")
