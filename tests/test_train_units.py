"""Unit tests of the training pieces: schedules, batch ramp, optimizer, LR rule, config validation, MFU."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.errors import ConfigError
from moe_jax.train import schedules
from moe_jax.train.config import train_config, validate, validate_vocab_size
from moe_jax.train.optimizer import make_optimizer, peak_learning_rate

PAPER = dict(peak_lr=1e-3, total_tokens=10e9, warmup_tokens=130e6, decay_fraction=0.2)


def test_trapezoidal_schedule_matches_spec():
    lr = lambda t: schedules.learning_rate(t, **PAPER)  # noqa: E731
    assert lr(0) == 0.0
    assert lr(65e6) == pytest.approx(0.5e-3)  # half-way through the 130 M-token warmup
    assert lr(130e6) == pytest.approx(1e-3)
    assert lr(7.99e9) == pytest.approx(1e-3)  # constant until the last 20 %
    assert lr(9e9) == pytest.approx(0.5e-3)  # half-way through the decay
    assert lr(10e9) == 0.0


def test_cosine_and_constant_schedules():
    cos = dict(PAPER, schedule="cosine")
    mid = PAPER["warmup_tokens"] + (PAPER["total_tokens"] - PAPER["warmup_tokens"]) / 2
    assert schedules.learning_rate(mid, **cos) == pytest.approx(0.5e-3)
    assert schedules.learning_rate(10e9, **cos) == pytest.approx(0.0, abs=1e-15)
    assert schedules.learning_rate(9.9e9, **dict(PAPER, schedule="constant")) == 1e-3


def test_paper_batch_ramp():
    ramp = dict(final_batch=512, ramp_tokens=(0.5e9, 1.0e9), ramp_sizes=(128, 256))
    assert schedules.batch_size_at(0, **ramp) == 128
    assert schedules.batch_size_at(0.5e9 - 1, **ramp) == 128
    assert schedules.batch_size_at(0.5e9, **ramp) == 256
    assert schedules.batch_size_at(1.0e9, **ramp) == 512
    steps, tokens = schedules.plan_run(steps=0, tokens=2e9, seq_len=512, **ramp)
    n128 = math.ceil(0.5e9 / (128 * 512))
    n256 = math.ceil((1e9 - n128 * 128 * 512) / (256 * 512))
    seen = (n128 * 128 + n256 * 256) * 512
    n512 = math.ceil((2e9 - seen) / (512 * 512))
    assert steps == n128 + n256 + n512 and tokens == seen + n512 * 512 * 512


def _reference_adamw(params, grads_seq, lr, clip, b1=0.9, b2=0.999, eps=1e-8, wd=0.1):
    """Textbook AdamW with global-norm clipping, in numpy float64."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
        scale = min(1.0, clip / norm)
        for k in p:
            gk = g[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk**2
            update = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            p[k] = p[k] - lr * (update + wd * p[k])
    return p


def test_optimizer_is_clipped_adamw_with_decay_on_all_params():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)]
    opt = make_optimizer(train_config())
    state = opt.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads_seq:
        state.hyperparams["learning_rate"] = jnp.float32(0.01)
        updates, state = opt.update(g, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    ref = _reference_adamw(params, grads_seq, lr=0.01, clip=0.1)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=2e-5, atol=1e-6)


def test_peak_lr_rule_and_override():
    # SPEC §3: LR(N, E) = exp(8.391640956234012 − 0.8121798244457074·ln N − 0.25·ln E)
    expected = math.exp(8.391640956234012 - 0.8121798244457074 * math.log(78.7e6) - 0.25 * math.log(8))
    assert peak_learning_rate(train_config(), 78.7e6, 8) == pytest.approx(expected, rel=1e-12)
    assert peak_learning_rate(train_config(learning_rate=2e-4), 78.7e6, 8) == 2e-4


def test_paper_config_defaults_follow_spec():
    from moe_jax.configlib import load_config

    c = load_config("configs/paper.py:d512_E8", ["--config.train.tokens=1e9"])
    t = c.train
    assert (t.adam_b1, t.adam_b2, t.adam_eps, t.weight_decay, t.grad_clip) == (0.9, 0.999, 1e-8, 0.1, 0.1)
    assert (t.batch_size, tuple(t.batch_ramp_sizes), tuple(t.batch_ramp_tokens)) == (512, (128, 256), (0.5e9, 1e9))
    assert (t.warmup_tokens, t.decay_fraction, t.schedule, t.tokens) == (130e6, 0.2, "trapezoidal", 1e9)
    assert c.data.seq_len == 512 and c.model.experts == 8 and c.model.capacity_factor_eval == 1.5


def _tiny():
    from moe_jax.configlib import load_config

    return load_config("configs/tiny.py", [])


@pytest.mark.parametrize("section,field,value,needle", [
    ("model", "top_k", 9, "top_k"),
    ("model", "n_heads", 3, "not divisible by model.n_heads"),
    ("model", "capacity_factor_train", 0.0, "capacity_factor_train"),
    ("model", "dispatch", "scatter", "dispatch"),
    ("data", "task", "wikipedia", "data.task"),
    ("train", "learning_rate", -1e-3, "train.learning_rate"),
    ("train", "schedule", "linear", "train.schedule"),
    ("train", "batch_ramp_sizes", (4, 8), "same length"),
    ("train", "steps", 0, "train.steps or train.tokens"),
])
def test_validate_rejects_bad_values(section, field, value, needle):
    config = _tiny()
    with config.unlocked():
        config[section][field] = value
        if field == "steps":
            config.train.tokens = 0.0
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate(config, device_count=1)


def test_validate_batch_divisible_by_devices_and_vocab():
    config = _tiny()
    validate(config, device_count=8)  # 16 and 8 split over 8 devices
    with pytest.raises(ConfigError, match="batch size 16 is not divisible by the 3 devices"):
        validate(config, device_count=3)
    with pytest.raises(ConfigError, match=r"model\.vocab_size \(8192\) is smaller .*50257"):
        validate_vocab_size(config, 50257)


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    from moe_jax.cli import main

    code = main(["train", "--config", "configs/tiny.py", "--workdir", str(tmp_path), "--config.model.top_k=9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "top_k" in err
    assert not (tmp_path / "checkpoints").exists()  # rejected before anything was built


def test_mfu_flops_exclude_the_embedding_gather():
    from moe_jax.scaling.counting import ModelShape
    from moe_jax.train.mfu import matmul_flops_per_token

    s = ModelShape(d_model=128, n_layers=4, n_heads=2, head_dim=64, ffn_hidden=384, experts=8, vocab=8192)
    # per token: 6·(attention 4d² + one expert 3dF per layer + head V·d) + attention scores 6·L·S·H·Dh
    expected = 6 * (4 * (4 * 128 * 128 + 3 * 128 * 384) + 8192 * 128) + 6 * 4 * 128 * 2 * 64
    assert matmul_flops_per_token(s, seq_len=128) == expected


def test_metrics_writer_drops_rows_after_the_resume_step_and_cut_lines(tmp_path):
    from moe_jax.train.metrics import MetricsWriter, read_metrics

    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 8):
        w.write(step, "train", {"loss": np.float32(1.0 / step)})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "kind": "tr')  # a line cut by SIGKILL mid-write
    MetricsWriter(tmp_path, resume_step=5, tensorboard=False).close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[1]["loss"] == pytest.approx(0.5)


def test_tensorboard_after_a_resume_shows_each_step_once_with_the_rerun_values(tmp_path):
    from moe_jax.train.metrics import MetricsWriter, read_events

    first = MetricsWriter(tmp_path)
    for step in range(1, 9):  # the killed run got to step 8; its last checkpoint was step 5
        first.write(step, "train", {"loss": float(step)})
    first.close()
    second = MetricsWriter(tmp_path, resume_step=5)  # same process and second: a second file, not an overwrite
    for step in range(6, 11):
        second.write(step, "train", {"loss": 100.0 + step})
    second.close()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2
    shown = [(step, value) for step, tag, value in read_events(tmp_path / "tb") if tag == "train/loss"]
    assert shown == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 11)]


def test_progress_bar_on_a_terminal_plain_lines_otherwise():
    import io

    from moe_jax.train.metrics import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    plain, tty = io.StringIO(), Tty()
    for stream in (plain, tty):
        p = Progress(10, "auto", stream=stream)
        p.update(5, 2.5, 1234.0)
        p.close()
    assert plain.getvalue() == "step 5/10 loss 2.5000 1,234 tok/s\n"
    assert tty.getvalue().startswith("\r[############............] step 5/10 loss 2.5000 1,234 tok/s")


def test_plan_run_stops_at_the_first_of_steps_and_tokens():
    assert schedules.plan_run(steps=10, tokens=0, seq_len=4, final_batch=2) == (10, 80)
    assert schedules.plan_run(steps=10, tokens=30, seq_len=4, final_batch=2) == (4, 32)
    assert schedules.plan_run(steps=3, tokens=1e9, seq_len=4, final_batch=2) == (3, 24)


def test_demo_table_compares_held_out_losses():
    from moe_jax.train.demo import format_table

    base = dict(n_act=2_951_168, tokens=251_904, wall_time_s=120.0, router_entropy=0.0, dropped_fraction=0.0)
    dense = dict(base, name="dense", experts=1, n_total=2_951_168, final_eval_loss=5.6)
    moe = dict(base, name="moe_e8", experts=8, n_total=7_079_936, final_eval_loss=5.5, router_entropy=1.5,
               dropped_fraction=0.1)
    table = format_table([dense, moe])
    assert "MoE wins: E = 8 minus dense = -0.1000" in table and "2.95M    7.08M" in table
    assert table.splitlines()[1].split()[6] == "0.1" and "close to uniform" not in table  # 251,904 / 2,951,168
    lost = format_table([dense, dict(moe, final_eval_loss=5.8, capacity_factor_train=1.5, router_entropy=2.05)])
    assert "dense wins: E = 8 minus dense = +0.2000" in lost
    assert "10 % of tokens over capacity at training CF 1.5" in lost and "close to uniform" in lost
    assert "close to uniform" not in format_table([dense, dict(moe, final_eval_loss=5.8)])  # entropy 1.5 < ln 8
    # Two seeds: the verdict is on the mean of the per-seed (paired) gaps; disagreeing seeds are called out.
    runs = [dict(dense, seed=0), dict(moe, seed=0, final_eval_loss=5.65), dict(dense, seed=1, final_eval_loss=5.8),
            dict(moe, seed=1, final_eval_loss=5.7)]
    two = format_table(runs)
    assert "MoE wins: E = 8 minus dense = -0.0250 nats/token on average over 2 seed(s) (per seed: +0.0500, -0.1000)" in two
    assert "the seeds disagree" in two and "the seeds disagree" not in table and "every seed" not in two + table
    agree = format_table([runs[0], dict(moe, seed=0), runs[2], dict(moe, seed=1, final_eval_loss=5.75)])
    assert "every seed agrees (MoE ahead on all 2)" in agree and "disagree" not in agree


def test_demo_config_pair_has_equal_active_parameters():
    from moe_jax.configlib import load_config
    from moe_jax.model import count_params
    from moe_jax.train.config import validate

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.py"
    dense, moe = (load_config(f"{demo}:{v}") for v in ("dense", "moe"))
    for c in (dense, moe):
        validate(c)
    a, b = count_params(dense.model), count_params(moe.model)
    assert (dense.model.experts, moe.model.experts) == (1, 8) and a["n_act"] == b["n_act"]
    assert b["n_total"] > 3 * a["n_act"] and 100 < dense.train.tokens / a["n_act"] < 400  # where the law favours E = 8
    assert dense.train.learning_rate == moe.train.learning_rate and dense.train.tokens == moe.train.tokens
    with pytest.raises(ConfigError, match="configs/demo.py:dense or configs/demo.py:moe"):
        load_config(f"{demo}:moe16")


def test_smooth_is_a_trailing_moving_average():
    from moe_jax.train.curves import smooth

    x = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    np.testing.assert_allclose(smooth(x, 2), [4.0, 3.0, 4.0, 3.0, 4.0])
    np.testing.assert_allclose(smooth(x, 1), x)
    np.testing.assert_allclose(smooth(x, 99), np.cumsum(x) / np.arange(1, 6))  # window longer than the data
    np.testing.assert_allclose(smooth(x, 0), x)


def _gpt2_bpe_dir(path: Path, size: int = 50257) -> Path:
    """A stand-in GPT-2 BPE directory with the real vocabulary size (ids 0..50255 + <|endoftext|> = 50256)."""
    import json

    path.mkdir()
    encoder = {f"t{i}": i for i in range(size - 1)} | {"<|endoftext|>": size - 1}
    (path / "encoder.json").write_text(json.dumps(encoder))
    (path / "vocab.bpe").write_text("#version: 0.2\nt 0\n")
    return path


def test_paper_config_requires_gpt2_bpe_and_counts_only_used_rows(tmp_path):
    """configs/paper.py: V = 50257 with the committed 8k vocabulary is refused, naming data.vocab_path;
    with a 50257-token GPT-2 BPE vocabulary N_act is the paper's 13·d²·L + 2·V·d exactly."""
    from moe_jax.configlib import load_config
    from moe_jax.data import get_vocabulary
    from moe_jax.model import count_params
    from moe_jax.scaling import counting

    config = load_config("configs/paper.py:d512_E1")
    with pytest.raises(ConfigError, match=r"model\.vocab_size \(50257\) exceeds the 8192 tokens of "
                                          r"data\.vocab_path='' .*GPT-2 BPE directory.*vocab_size=8192"):
        validate_vocab_size(config, get_vocabulary(config.data).vocab_size)
    bpe = _gpt2_bpe_dir(tmp_path / "gpt2")
    config = load_config("configs/paper.py:d512_E1", [f"--config.data.vocab_path={bpe}"])
    validate_vocab_size(config, get_vocabulary(config.data).vocab_size)
    n_act = count_params(config.model)["n_act"]
    norms = 2 * 8 * 2 * 512  # two LayerNorms (scale + bias) per block
    assert n_act == counting.paper_n_act(512, 8) + norms
    with pytest.raises(ConfigError, match=r"exceeds the 259 tokens.*--config\.model\.vocab_size=259"):
        validate_vocab_size(load_config("configs/tiny.py", ["--config.data.vocab_path=bytes"]), 259)


def test_train_with_paper_config_and_wrong_vocabulary_writes_nothing(tmp_path, capsys):
    from moe_jax.cli import main

    workdir = tmp_path / "run"
    code = main(["train", "--config", "configs/paper.py:d512_E1", "--workdir", str(workdir),
                 f"--config.data.fineweb_path={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "data.vocab_path" in err and "GPT-2 BPE" in err
    assert not workdir.exists()
