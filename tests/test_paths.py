"""gs:// run paths: the workdir's own files (config.json, metrics.jsonl) go through etils.epath.

A bucket cannot be reached here, so epath's gs:// backend is mocked by a local directory standing in
for the bucket (the `bucket` fixture of conftest.py).
"""

from __future__ import annotations

import json

import pytest

from moe_jax.errors import ConfigError
from moe_jax.paths import is_remote, run_path
from moe_jax.train import workdir as run_dir
from moe_jax.train.metrics import MetricsWriter, read_metrics


def test_remote_paths_are_recognised():
    assert is_remote("gs://b/x") and not is_remote("/tmp/x") and not is_remote("runs/gs://x")
    assert str(run_path("gs://b/runs/a")) == "gs://b/runs/a"
    assert run_path("runs/a").is_absolute()


def test_workdir_config_json_in_a_bucket(bucket):
    from moe_jax.configlib import load_config

    config = load_config("tiny")
    workdir = run_dir.check_usable("gs://bucket/runs/tiny")
    run_dir.check_config_file(workdir, config)
    run_dir.claim(workdir, config)
    stored = json.loads((bucket / "bucket" / "runs" / "tiny" / "config.json").read_text())
    assert stored["model"]["d_model"] == config.model.d_model
    run_dir.check_config_file(workdir, config)  # the same run resumes
    with pytest.raises(ConfigError, match="holds a run with model.d_model=128, not 64"):
        run_dir.check_config_file(workdir, load_config("tiny", ["--config.model.d_model=64"]))


def test_metrics_in_a_bucket_are_appended_and_truncated_on_resume(bucket):
    workdir = "gs://bucket/runs/m"
    run_path(workdir).mkdir(parents=True)  # as run_dir.claim does first
    writer = MetricsWriter(workdir, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, "train", {"loss": 1.0 / step})
    writer.close()
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3]
    resumed = MetricsWriter(workdir, resume_step=2, tensorboard=False)  # restarted from the step-2 checkpoint
    resumed.write(3, "train", {"loss": 0.25})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(workdir)] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert (bucket / "bucket" / "runs" / "m" / "metrics.jsonl").exists()
