"""File paths that may live on the local disk or in a Cloud Storage bucket (`gs://…`): the one place for both.

    workdir = run_path("gs://bucket/runs/d1024_E8")   # etils.epath.Path (TensorFlow's gfile underneath)
    workdir = run_path("runs/tiny")                     # pathlib.Path, absolute
    out = user_path("fits/joint")                       # pathlib.Path as given (relative stays relative)
    require_local("gs://b/sweep", "sweep directory", "it holds the SQLite registry")   # UserError for gs://

Both answer `/`, exists, is_dir, mkdir, iterdir, glob, open, read_text and write_text alike; Orbax
takes either. What only a local disk can do (atomic rename over a file, chmod) is done only there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from moe_jax.errors import UserError

REMOTE_PREFIXES = ("gs://",)


def is_remote(path) -> bool:
    """True for a bucket path such as gs://bucket/dir."""
    return os.fspath(path).startswith(REMOTE_PREFIXES)


def user_path(path):
    """`path` as the user gave it: a pathlib.Path, or an etils.epath.Path when it is a gs:// path.

    Never pathlib for gs://: Path('gs://b/x') silently becomes the local folder 'gs:/b/x'."""
    if is_remote(path):
        from etils import epath

        return epath.Path(os.fspath(path))
    return Path(path)


def run_path(path):
    """`path` as an absolute pathlib.Path, or as an etils.epath.Path when it is a gs:// path."""
    return user_path(path) if is_remote(path) else Path(path).absolute()


def open_existing(path, mode: str = "r"):
    """path.open(mode), raising FileNotFoundError for a missing file in a bucket too (where the backend may
    raise its own error type, or only at the first read)."""
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
    return path.open(mode)


def require_local(path, what: str, why: str) -> None:
    """UserError (one line) when `path` is a gs:// path where only the local disk will do, saying `why`."""
    if is_remote(path):
        raise UserError(f"{what} {os.fspath(path)} must be on the local disk, not in a bucket: {why}")


def write_text_atomic(path, text: str) -> None:
    """Write a whole file so that readers never see half of it (a bucket object is written whole anyway)."""
    if is_remote(path):
        path.write_text(text)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def remove_tree(path) -> None:
    """Delete a directory tree, locally or in a bucket; a tree already gone is fine."""
    if is_remote(path):
        if path.exists():
            path.rmtree()
        return
    shutil.rmtree(path, ignore_errors=True)
