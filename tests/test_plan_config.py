"""`moe-jax plan --write-config`: the recommended configuration as a train config that loads and trains."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moe_jax.configlib import load_config
from moe_jax.scaling import counting
from moe_jax.scaling.law import load_law
from moe_jax.train import schedules


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "moe_jax.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_written_config_has_integer_shape_exact_counts_and_trains(tmp_path):
    from moe_jax.model import count_params

    path = tmp_path / "planned.py"
    out = _cli("plan", "--flops", "1e20", "--json", "--write-config", path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["config_file"] == str(path)
    best = min(plan["compute_optimal"], key=lambda r: r["loss"])
    config = load_config(str(path))
    m, t = config.model, config.train
    assert m.d_model % 64 == 0 and abs(m.d_model - best["d_model"]) <= 32 and m.n_layers == m.n_heads == m.d_model // 64
    assert (m.experts, m.head_dim, m.ffn_hidden, m.vocab_size) == (best["experts"], 64, 3 * m.d_model, 50257)
    n_act = count_params(m)["n_act"]  # the built model's count, not the law's real-valued one
    assert t.learning_rate == pytest.approx(counting.lr_for(n_act, m.experts), rel=1e-12)
    ramp = dict(seq_len=config.data.seq_len, final_batch=t.batch_size, ramp_tokens=tuple(t.batch_ramp_tokens),
                ramp_sizes=tuple(t.batch_ramp_sizes))
    assert schedules.step_at_tokens(t.tokens, **ramp) is not None  # the run ends exactly at its budget
    assert 6 * n_act * t.tokens == pytest.approx(1e20, rel=1e-3)  # the plan's FLOPs at the integer shape
    law = load_law("paper2025")
    assert f"predicted held-out loss {float(law.loss(n_act, t.tokens, m.experts)):.4f}" in path.read_text()


def test_written_config_trains_a_few_steps(tmp_path):
    path = tmp_path / "small.py"
    assert _cli("plan", "--flops", "1e17", "--write-config", path).returncode == 0
    overrides = ["--config.data.task=fixture", "--config.data.vocab_path=bytes", "--config.model.vocab_size=259",
                 "--config.data.seq_len=32",
                 "--config.train.steps=2", "--config.train.batch_size=2", "--config.train.batch_ramp_tokens=()",
                 "--config.train.batch_ramp_sizes=()", "--config.train.warmup_tokens=0.0",
                 "--config.train.eval_batches=1", "--config.train.progress=none", "--config.train.tensorboard=False",
                 "--config.train.measure_mfu=False"]
    out = _cli("train", "--config", path, "--workdir", tmp_path / "run", *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_eval_loss"] > 0
    assert summary["config"]["model"]["d_model"] % 64 == 0  # an integer paper shape


def test_write_config_needs_a_py_path(tmp_path):
    out = _cli("plan", "--flops", "1e20", "--write-config", tmp_path / "x.txt")
    assert out.returncode == 2 and "must name a .py file" in out.stderr and out.stderr.count("\n") == 1
