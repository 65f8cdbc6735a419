"""A run's working directory: checked before anything is written, then claimed with WORKDIR/config.json.

    check_config_file(workdir, config)   # read-only: refuses a workdir that holds another run
    claim(workdir, config)               # creates the directory and writes config.json

Nothing here deletes or rewrites what a previous run left: a directory that cannot be used is
reported as one line naming the path, the problem and what to do instead.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from flax import traverse_util

from moe_jax.errors import ConfigError, UserError
from moe_jax.paths import is_remote, run_path, write_text_atomic

CONFIG_FILE = "config.json"
# Fields that may differ when resuming a workdir (they change how a run is watched, not what it computes).
RESUME_MUTABLE = {"train.progress", "train.log_every", "train.tensorboard", "train.measure_mfu",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.async_checkpoints",
                  # A run may move to another slice (checkpoints reshard on restore). With model.token_groups = 0
                  # the capacity groups follow the mesh; pin token_groups to keep them fixed across meshes.
                  "mesh.data", "mesh.fsdp", "mesh.expert", "mesh.tensor",
                  # How ragged_dot is lowered on GPU (same values; older runs stored false, now "auto").
                  "model.ragged_dot_triton"}


UNSTACKED_LAYERS = ("was trained by an older moe_jax that kept one parameter tree per layer; this version stacks "
                    "the layers ([L, ...], model.scan_layers) and cannot restore it")


def _flat(tree: dict) -> dict:
    """{'a': {'b': 1}} → {'a.b': 1}; tuples as lists, as JSON stores them."""
    flat = traverse_util.flatten_dict(tree, sep=".")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())  # '/' always exists


def _beside(path: Path, file: Path) -> Path:
    """A directory path in place of `path`, which is `file` or lies under it: /x/f/run → /x/f_runs/run."""
    rest = path.relative_to(file)
    for n in itertools.count(1):
        candidate = file.parent / f"{file.name}_runs{n if n > 1 else ''}" / rest
        if _nearest_existing(candidate).is_dir():
            return candidate


def check_usable(workdir: str | os.PathLike) -> Path:
    """The absolute workdir path, or a UserError if it (or a parent) is a file or cannot be written."""
    if is_remote(workdir):  # a bucket: nothing to check before the first write
        return run_path(workdir)
    path = Path(workdir).absolute()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise UserError(f"workdir {path} {where}; give a directory path (e.g. {_beside(path, existing)})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"workdir {path}: {existing} is not writable; choose a directory you can write to")
    return path


def _exists(path) -> bool:
    """path.exists(), with a bucket that cannot be reached (no network, no credentials) as one line."""
    try:
        return path.exists()
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - TensorFlow's gfile raises its own errors for gs://
        raise UserError(f"cannot reach {path}: {' '.join(str(err).split())[:200]}") from None


def check_config_file(workdir: Path, config) -> None:
    """Refuse a workdir whose config.json records another run, or cannot be read (nothing is written)."""
    path = workdir / CONFIG_FILE
    if not _exists(path):
        return
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:120]}); it "
                        f"records this run's config: restore it, or train in a new --workdir") from None
    old, new = _flat(old), _flat(_config_json(config))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUME_MUTABLE)
    if "model.scan_layers" in diff and "model.scan_layers" not in old:
        raise ConfigError(f"workdir {workdir} {UNSTACKED_LAYERS}: use a new --workdir")
    if diff:
        k = diff[0]
        raise ConfigError(f"workdir {workdir} holds a run with {k}={old.get(k)!r}, not {new.get(k)!r}; "
                          f"use a new --workdir or the original config ({len(diff)} field(s) differ: {', '.join(diff[:5])})")


def check_layers_stacked(source, spec: str) -> None:
    """ConfigError (one line) when the run in `source` (a train.init_from source) kept one parameter tree per
    layer: its config.json predates model.scan_layers. A missing or unreadable config.json is left to the restore."""
    path = run_path(source) / CONFIG_FILE
    try:
        model = json.loads(path.read_text()).get("model") if _exists(path) else None
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return
    if isinstance(model, dict) and "scan_layers" not in model:
        raise ConfigError(f"train.init_from={spec!r}: {source} {UNSTACKED_LAYERS}; branch from a run of this version")


def make_dir(workdir: Path) -> None:
    """mkdir -p, with a directory that cannot be created (read-only, /sys) as a one-line UserError."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to workdir {workdir}: {err.strerror or err}") from None


def claim(workdir: Path, config, *, write: bool = True) -> None:
    """Create the workdir and (if `write`: the one writing process) config.json; OSError → one-line UserError."""
    make_dir(workdir)
    if not write:
        return
    try:
        write_text_atomic(workdir / CONFIG_FILE, json.dumps(_config_json(config), indent=1, sort_keys=True))
    except OSError as err:
        raise UserError(f"cannot write to workdir {workdir}: {err.strerror or err}") from None
