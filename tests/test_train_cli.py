"""`moe-jax train` end to end on the real data pipeline (the self-preparing fixture task), shrunk model."""

from __future__ import annotations

import json
import math

import jax
import pytest

from moe_jax.cli import main
from moe_jax.train.metrics import read_metrics


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """The CLI turns on a persistent compilation cache in the user cache dir: keep it in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", old)


def test_moe_jax_train_runs_on_the_fixture_task_and_resumes_as_a_no_op(tmp_path, capsys, private_cache):
    workdir = tmp_path / "run"
    argv = ["train", "--config", "configs/tiny.py", "--workdir", str(workdir),
            "--config.data.task=fixture", f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.seq_len=32",
            "--config.data.builtin_vocab_size=2048", "--config.model.vocab_size=2048", "--config.model.d_model=32",
            "--config.model.n_layers=1", "--config.model.n_heads=2", "--config.model.head_dim=16",
            "--config.model.ffn_hidden=96", "--config.model.experts=4", "--config.train.tokens=0",
            "--config.train.steps=4", "--config.train.batch_size=4", "--config.train.batch_ramp_tokens=(64.0,)",
            "--config.train.batch_ramp_sizes=(2,)", "--config.train.warmup_tokens=32", "--config.train.eval_batches=1",
            "--config.train.log_every=1", "--config.train.tensorboard=False", "--config.train.measure_mfu=False"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((workdir / "summary.json").read_text())
    assert printed["final_eval_loss"] == summary["final_eval_loss"] and math.isfinite(summary["final_eval_loss"])
    assert summary["tokens"] == (2 + 4 + 4 + 4) * 32 and summary["experts"] == 4  # ramp: 2 seqs until 64 tokens
    rows = read_metrics(workdir, "train")
    assert [r["batch_size"] for r in rows] == [2, 4, 4, 4]
    assert all(r["ce"] < 1.5 * math.log(2048) for r in rows)  # sane cross-entropy on the real vocabulary
    # Re-running the finished run resumes at its last step: nothing is retrained, same summary.
    assert main(argv) == 0
    again = json.loads((workdir / "summary.json").read_text())
    assert again["final_eval_loss"] == summary["final_eval_loss"] and len(read_metrics(workdir, "train")) == 4
    assert not (workdir / "checkpoints_corrupt").exists()  # a clean resume quarantines nothing


def test_moe_jax_demo_trains_the_pair_per_seed_and_prints_a_paired_verdict(tmp_path, capsys, private_cache):
    argv = ["demo", "--tokens", "4096", "--seeds", "2", "--workdir", str(tmp_path / "runs"), "--json",
            "--config.data.task=fixture", f"--config.data.data_dir={tmp_path / 'data'}",
            "--config.train.eval_batches=1", "--config.train.measure_mfu=False", "--config.train.progress=none",
            "--config.train.tensorboard=False"]
    assert main(argv) == 0
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["name"], r["seed"], r["experts"]) for r in runs] == [
        ("dense", 0, 1), ("moe_e8", 0, 8), ("dense", 1, 1), ("moe_e8", 1, 8)]
    assert len({r["n_act"] for r in runs}) == 1 and all(r["tokens"] == 4096 for r in runs)
    losses = {(r["name"], r["seed"]): r["final_eval_loss"] for r in runs}
    assert losses[("dense", 0)] != losses[("dense", 1)]  # the seed reaches init and data order
    assert all((tmp_path / "runs" / f"{n}_s{s}" / "summary.json").exists() for n, s in losses)
    assert (tmp_path / "runs" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["demo", "--seeds", "0"]) == 2 and "--seeds must be ≥ 1" in capsys.readouterr().err


@pytest.mark.slow  # two 10 M-token runs, ~4 min on 2 cores (+ ~2 min to prepare the corpus on a fresh machine)
def test_demo_moe_beats_dense_at_equal_active_parameters_as_the_readme_says(tmp_path, private_cache):
    from moe_jax.train.demo import DEMO_CONFIG, paired_gaps, run_demo

    quiet = ["--config.train.progress=none", "--config.train.tensorboard=False", "--config.train.measure_mfu=False"]
    runs = run_demo(str(DEMO_CONFIG), str(tmp_path / "demo"), None, None, quiet, seeds=1)
    dense, moe = (r["final_eval_loss"] for r in runs)
    # README "What the demo shows", seed 0: dense 1.7958, E = 8 1.7509 (deterministic on this CPU; other
    # XLA builds may move the last digits).
    assert dense == pytest.approx(1.7958, abs=0.01) and moe == pytest.approx(1.7509, abs=0.01)
    assert paired_gaps(runs)[1] < -0.03 and runs[0]["n_act"] == runs[1]["n_act"]
