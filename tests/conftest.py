"""Shared test setup: keep JAX on one CPU device per process unless a test asks otherwise; `bucket`, a local
stand-in for a Cloud Storage bucket."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet TensorFlow's C++ banner


@pytest.fixture
def bucket(tmp_path):
    """gs://NAME/... is tmp_path/gcs/NAME/... for every etils.epath operation (what moe_jax.paths uses).

    A bucket cannot be reached here, so epath's gs:// backend is mocked by a local directory; Orbax
    (checkpoints) and TFRecord (TensorBoard) talk to GCS themselves and are not covered by this stand-in.
    Yields the root directory (tmp_path/gcs).
    """
    from unittest import mock

    from etils.epath import backend as backend_lib, gpath, testing as epath_testing

    root = tmp_path / "gcs"

    def local(path) -> str:
        text = str(path)
        assert text.startswith("gs://"), text
        return str(root / text[len("gs://"):])

    def on_local(name):
        def fn(original, path, *args, **kwargs):
            return getattr(backend_lib.os_backend, name)(local(path), *args, **kwargs)
        return fn

    def glob(original, pattern):
        return [f"gs://{Path(p).relative_to(root)}" for p in backend_lib.os_backend.glob(local(pattern))]

    names = ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat")
    with mock.patch.object(gpath, "_is_tf_installed", lambda: False):  # else gs:// skips the backend table
        with epath_testing.mock_epath(glob=glob, **{n: on_local(n) for n in names}):
            yield root
