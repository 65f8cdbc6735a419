"""Run paths that may live on the local disk or in a Cloud Storage bucket (`gs://…`).

    workdir = run_path("gs://bucket/runs/d1024_E8")   # etils.epath.Path (TensorFlow's gfile underneath)
    workdir = run_path("runs/tiny")                     # pathlib.Path, absolute

Both answer `/`, exists, is_dir, mkdir, iterdir, glob, open, read_text and write_text alike; Orbax
takes either. What only a local disk can do (atomic rename over a file, chmod) is done only there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REMOTE_PREFIXES = ("gs://",)


def is_remote(path) -> bool:
    """True for a bucket path such as gs://bucket/dir."""
    return os.fspath(path).startswith(REMOTE_PREFIXES)


def run_path(path):
    """`path` as an absolute pathlib.Path, or as an etils.epath.Path when it is a gs:// path."""
    if is_remote(path):
        from etils import epath

        return epath.Path(os.fspath(path))
    return Path(path).absolute()


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
