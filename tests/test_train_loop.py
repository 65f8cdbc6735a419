"""End-to-end training on a tiny model and fake data: learning, metrics, summary, exact resume, NaN guard."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.scaling.counting import training_flops
from moe_jax.train.checkpointing import load_state
from moe_jax.train.loop import EXIT_PREEMPTED, TrainingDiverged, train
from moe_jax.train.metrics import read_events, read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import VOCAB, FakeData, assert_resumed, fixture_config, kept_buffers, tiny_config  # noqa: E402

LOSS_KEYS = ("loss", "ce", "aux_loss", "load_balance_loss", "z_loss", "dropped_fraction", "load_imbalance",
             "router_entropy", "grad_norm", "lr", "tokens", "batch_size")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA compilation cache shared by this module's runs and child processes (saves minutes)."""
    path = str(tmp_path_factory.mktemp("xla_cache"))
    old = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield path
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, compile_cache):
    """One uninterrupted 12-step run (batch ramp 4 → 8 at 256 tokens), TensorBoard on."""
    workdir = tmp_path_factory.mktemp("reference")
    summary = train(tiny_config(tensorboard=True), workdir, data_module=FakeData)
    return workdir, summary


def _params(workdir):
    return load_state(workdir)[1]["params"]


def _assert_same_params(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(x, y), "parameters differ after resume"


def _final_meta(workdir):
    """The newest checkpoint's metadata (step, tokens, data iterator position)."""
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return json.loads((workdir / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def _assert_same_run_state(workdir, ref_dir):
    """Parameters, optimizer state, RNG and data position of the final checkpoints are equal."""
    (step_a, a), (step_b, b) = load_state(workdir), load_state(ref_dir)
    assert step_a == step_b
    for part in ("params", "opt_state", "rng"):
        _assert_same_params(a[part], b[part])
    meta_a, meta_b = _final_meta(workdir), _final_meta(ref_dir)
    assert meta_a["data"] == meta_b["data"] and meta_a["tokens"] == meta_b["tokens"]


def _metric_rows(workdir):
    return [{k: r.get(k) for k in ("step", "kind", "eval_loss", *LOSS_KEYS)} for r in read_metrics(workdir)]


def _tb_rows(workdir):
    """TensorBoard's view of the loss scalars: {(step, tag): value}, each (step, tag) at most once."""
    rows = [(s, t, v) for s, t, v in read_events(workdir / "tb") if t in ("train/loss", "eval/eval_loss")]
    assert len({(s, t) for s, t, _ in rows}) == len(rows), "a step shown twice in TensorBoard"
    return {(s, t): v for s, t, v in rows}


def test_tiny_run_learns_and_writes_summary_metrics_checkpoints(reference_run):
    workdir, summary = reference_run
    # Ramp: 4 sequences × 16 tokens until 256 tokens (4 steps), then 8 × 16 for the remaining 8 steps.
    assert summary["steps"] == 12 and summary["tokens"] == 4 * 64 + 8 * 128
    from moe_jax.model import count_params

    counts = count_params(tiny_config().model)
    assert (summary["n_act"], summary["n_total"], summary["experts"]) == (counts["n_act"], counts["n_total"], 4)
    assert summary["flops"] == training_flops(counts["n_act"], summary["tokens"])
    assert json.loads((workdir / "summary.json").read_text())["final_eval_loss"] == summary["final_eval_loss"]
    train_rows = read_metrics(workdir, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    assert [r["batch_size"] for r in train_rows] == [4] * 4 + [8] * 8
    assert all(set(LOSS_KEYS) | {"tokens_per_s"} <= set(r) for r in train_rows)
    assert train_rows[0]["lr"] == 0.0 and train_rows[2]["lr"] == pytest.approx(1e-2)  # warmup over 128 tokens
    # Decay over the last 20 % = 256 of 1280 tokens: step 12 starts at 1152 tokens → half the peak.
    assert train_rows[-2]["lr"] == pytest.approx(1e-2) and train_rows[-1]["lr"] == pytest.approx(5e-3)
    evals = read_metrics(workdir, "eval")
    assert [r["step"] for r in evals] == [5, 10, 12]
    # The fake stream is learnable: held-out loss falls, below uniform guessing (ln 64 = 4.16).
    assert evals[0]["eval_loss"] > evals[-1]["eval_loss"] and summary["final_eval_loss"] < np.log(VOCAB) - 0.2
    assert summary["final_eval_loss"] == evals[-1]["eval_loss"]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [8, 12]
    tb = {(step, tag): value for step, tag, value in read_events(workdir / "tb")}
    assert tb[(12, "eval/eval_loss")] == pytest.approx(summary["final_eval_loss"], rel=1e-6)
    assert tb[(3, "train/loss")] == pytest.approx(train_rows[2]["loss"], rel=1e-6)


def test_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(reference_run, tmp_path, caplog):
    ref_dir, ref = reference_run
    workdir = tmp_path / "run"
    import shutil

    shutil.copytree(ref_dir, workdir)
    (workdir / "summary.json").unlink()
    for f in (workdir / "checkpoints" / "12" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # a half-written data file
    with caplog.at_level(logging.WARNING):
        summary = train(tiny_config(tensorboard=True), workdir, data_module=FakeData)
    assert "checkpoint at step 12 is unusable" in caplog.text
    assert summary["final_eval_loss"] == ref["final_eval_loss"]
    _assert_same_params(_params(workdir), _params(ref_dir))
    assert _metric_rows(workdir) == _metric_rows(ref_dir)
    assert len(list((workdir / "tb").glob("events.*"))) == 2 and _tb_rows(workdir) == _tb_rows(ref_dir)


def _child_script(tmp_path, overrides: dict) -> Path:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_helpers import FakeData, FakeIterator, tiny_config
        FakeIterator.delay_s = 0.25
        from moe_jax.train.loop import EXIT_PREEMPTED, train
        s = train(tiny_config(**{overrides!r}), sys.argv[1], data_module=FakeData)
        sys.exit(EXIT_PREEMPTED if s["preempted"] else 0)
    """))
    return script


def _kill_midway(script, workdir, sig, min_rows, seed):
    """Start the child, wait until it has logged `min_rows` train rows plus a random delay, send `sig`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.Popen([sys.executable, str(script), str(workdir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= min_rows:
            break
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 0.5))
    if proc.poll() is None:
        proc.send_signal(sig)
    code = proc.wait(timeout=240)
    return code, proc.stderr.read().decode()


def test_sigkill_then_restart_gives_identical_params_and_metrics(reference_run, tmp_path):
    ref_dir, ref = reference_run
    workdir = tmp_path / "run"
    script = _child_script(tmp_path, {})
    code, err = _kill_midway(script, workdir, signal.SIGKILL, min_rows=5, seed=1)
    assert code == -signal.SIGKILL, err[-2000:]
    summary = train(tiny_config(), workdir, data_module=FakeData)
    assert_resumed(summary)
    assert summary["final_eval_loss"] == ref["final_eval_loss"]
    _assert_same_run_state(workdir, ref_dir)
    assert _metric_rows(workdir) == _metric_rows(ref_dir)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_sigkill_during_saves_then_restart_is_exact(reference_run, tmp_path, seed):
    """Checkpoint every step so the kill almost surely lands inside an async save."""
    ref_dir, _ = reference_run
    workdir = tmp_path / "run"
    overrides = {"checkpoint_every": 1}
    code, err = _kill_midway(_child_script(tmp_path, overrides), workdir, signal.SIGKILL, min_rows=3 + seed, seed=seed)
    assert code == -signal.SIGKILL, err[-2000:]
    summary = train(tiny_config(**overrides), workdir, data_module=FakeData)
    assert_resumed(summary)
    _assert_same_run_state(workdir, ref_dir)
    assert _metric_rows(workdir) == _metric_rows(ref_dir)


def test_sigkill_on_the_real_data_pipeline_resumes_params_optimizer_and_data_position(tmp_path, compile_cache):
    """The fixture task through moe_jax.data (token cache, windows, held-out split), killed mid-run."""
    data_dir = tmp_path / "data"
    ref_dir, workdir = tmp_path / "reference", tmp_path / "run"
    ref = train(fixture_config(data_dir), ref_dir)  # also prepares the fixture corpus
    script = tmp_path / "child_real.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_helpers import fixture_config, slow_down_real_data
        slow_down_real_data(0.25)
        from moe_jax.train.loop import train
        train(fixture_config({str(data_dir)!r}), sys.argv[1])
    """))
    code, err = _kill_midway(script, workdir, signal.SIGKILL, min_rows=6, seed=2)
    assert code == -signal.SIGKILL, err[-2000:]
    summary = train(fixture_config(data_dir), workdir)
    assert_resumed(summary)
    assert summary["final_eval_loss"] == ref["final_eval_loss"]
    _assert_same_run_state(workdir, ref_dir)
    assert _final_meta(workdir)["data"]["position"] > 0


def test_sigterm_saves_and_the_rerun_finishes_identically(reference_run, tmp_path):
    ref_dir, _ = reference_run
    workdir = tmp_path / "run"
    overrides = {"checkpoint_every": 0}  # only the SIGTERM save can make resuming possible
    code, err = _kill_midway(_child_script(tmp_path, overrides), workdir, signal.SIGTERM, min_rows=3, seed=0)
    assert code == EXIT_PREEMPTED, err[-2000:]
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 12
    summary = train(tiny_config(**overrides), workdir, data_module=FakeData)
    assert summary["start_step"] == saved[0]  # restored the SIGTERM save, trained only the rest
    assert_resumed(summary)
    _assert_same_run_state(workdir, ref_dir)


def test_nan_loss_stops_with_clear_error_and_keeps_good_checkpoints(tmp_path, compile_cache):
    # LR 1e30 with no warmup: step 1 blows the weights up, a later loss is inf/NaN.
    config = tiny_config(learning_rate=1e30, warmup_tokens=0.0, checkpoint_every=1, eval_every=0)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step (\d+)") as info:
        train(config, tmp_path, data_module=FakeData)
    bad_step = int(info.value.args[0].split("at step ")[1].split()[0])
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) == bad_step - 1  # every finite step saved, the diverged one never
    step, state = load_state(tmp_path)
    assert step == bad_step - 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_resume_refuses_a_different_config(reference_run, tmp_path):
    import shutil

    from moe_jax.errors import ConfigError

    workdir = tmp_path / "run"
    shutil.copytree(reference_run[0], workdir)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        train(tiny_config(learning_rate=1e-3), workdir, data_module=FakeData)


@pytest.mark.slow  # bf16 on CPU compiles slowly (~50 s under load)
def test_bfloat16_compute_trains_float32_params(compile_cache):
    from moe_jax.model import build_model
    from moe_jax.train.optimizer import make_optimizer
    from moe_jax.train.steps import init_train_state, make_train_step

    config = tiny_config()
    config.model.compute_dtype = "bfloat16"
    opt = make_optimizer(config.train)
    graphdef, rest, state = init_train_state(build_model, config.model, 0, opt)
    step = make_train_step(graphdef, rest, opt)
    batch = FakeData.make_train_iterator(config.data).next_batch(8)
    new, out = step(state, batch, np.float32(1e-2))
    assert np.isfinite(float(out["loss"])) and abs(float(out["ce"]) - np.log(VOCAB)) < 0.5
    for old_leaf, new_leaf in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(new["params"])):
        assert new_leaf.dtype == jnp.float32 and not np.array_equal(old_leaf, new_leaf)


def test_all_checkpoints_unusable_is_an_error_not_a_silent_restart(reference_run, tmp_path):
    import shutil

    from moe_jax.errors import UserError

    workdir = tmp_path / "run"
    shutil.copytree(reference_run[0], workdir)
    for f in (workdir / "checkpoints").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"")
    with pytest.raises(UserError, match=r"none of the checkpoints \[8, 12\]"):
        train(tiny_config(), workdir, data_module=FakeData)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "8"]


def test_cooldown_branch_from_a_constant_trunk_equals_the_direct_run(reference_run, tmp_path):
    """SPEC §5 checkpoint reuse: trunk at constant LR to 0.8·T, branch decays to T → the same as one run to T."""
    trunk, branch = tmp_path / "trunk", tmp_path / "branch"
    # 10 steps = 1024 tokens = 0.8 × 1280: exactly where the reference run's decay starts.
    train(tiny_config(schedule="constant", steps=10), trunk, data_module=FakeData)
    summary = train(tiny_config(init_from=f"{trunk}:10"), branch, data_module=FakeData)
    assert summary["steps"] == 12 and summary["final_eval_loss"] == reference_run[1]["final_eval_loss"]
    _assert_same_params(_params(branch), _params(reference_run[0]))
    assert [r["step"] for r in read_metrics(branch, "train")] == [11, 12]


def _nan_updates_at(step: int):
    """An optax transform that turns every update non-finite at optimizer step `step` (the loss stays finite)."""
    import optax

    def update(updates, state, params=None):
        count = state + 1
        return jax.tree.map(lambda u: jnp.where(count == step, jnp.nan, u), updates), count

    return optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


def test_non_finite_gradients_stop_the_run_before_any_save(tmp_path, compile_cache, monkeypatch):
    import optax

    import moe_jax.train.loop as loop

    def poisoned_optimizer(train_cfg):
        return optax.inject_hyperparams(
            lambda learning_rate: optax.chain(_nan_updates_at(6), optax.adamw(learning_rate)))(learning_rate=0.0)

    monkeypatch.setattr(loop, "make_optimizer", poisoned_optimizer)
    config = tiny_config(checkpoint_every=1, eval_every=0, log_every=4)  # the guard is checked at every save
    with pytest.raises(TrainingDiverged, match=r"gradients or updated parameters are non-finite \(loss [0-9.]+\) at step 6 "):
        train(config, tmp_path, data_module=FakeData)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert max(saved) == 5
    step, state = load_state(tmp_path)
    assert step == 5 and all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_a_workdir_of_unstacked_layers_gets_a_clear_message(reference_run, tmp_path):
    from moe_jax.errors import ConfigError

    config = json.loads((reference_run[0] / "config.json").read_text())
    del config["model"]["scan_layers"]  # as written before layers were stacked
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="older moe_jax that kept one parameter tree per layer"):
        train(tiny_config(), tmp_path, data_module=FakeData)


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory, compile_cache):
    """A 10-step run (log every 5, one save and eval at the end) recording, per train step, every
    device→host read of a jax.Array, the loop's `to_host` calls, and whether the step's input state was freed."""
    from jax._src import array as jax_array

    from moe_jax.train import loop

    steps_done, reads, fetches, kept = [0], [], [], []
    value = jax_array.ArrayImpl._value

    def read(array):
        reads.append(steps_done[0])
        return value.fget(array)

    def fetch(tree):
        fetches.append(steps_done[0])
        return jax.device_get(tree)

    def watching(*args, **kwargs):
        step = loop_make_train_step(*args, **kwargs)

        def watched(state, batch, lr):
            out = step(state, batch, lr)
            kept.append(kept_buffers(state))
            steps_done[0] += 1
            return out

        return watched

    loop_make_train_step = loop.make_train_step
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "make_train_step", watching)
        patch.setattr(loop, "to_host", fetch)
        patch.setattr(jax_array.ArrayImpl, "_value", property(read))
        config = tiny_config(steps=10, log_every=5, eval_every=0, checkpoint_every=0)
        summary = train(config, tmp_path_factory.mktemp("watched"), data_module=FakeData)
    assert summary["steps"] == 10
    return dict(reads=reads, fetches=fetches, kept=kept)


def test_metrics_leave_the_device_only_every_log_every_steps(watched_run):
    """log_every=5 over 10 steps: the guard and metrics are fetched after steps 5 and 10 only (10 also saves
    and evaluates); no other step reads anything back from the device."""
    assert sorted(set(watched_run["fetches"])) == [5, 10]
    assert set(watched_run["reads"]) - {0} == {5, 10}  # 0: building and restoring, before the first step


def test_the_loop_donates_its_state_to_the_train_step(watched_run):
    """Every step frees the previous parameters, Adam moments and RNG (XLA reuses their buffers); only the
    injected learning rate, a fresh scalar each step aliased to no output, stays."""
    assert watched_run["kept"] == [["['opt_state'].hyperparams['learning_rate']"]] * 10


@pytest.mark.parametrize("form", ["WORKDIR:STEP", "TRUNK@TOKENS"])
def test_init_from_a_run_of_unstacked_layers_gets_the_same_clear_message(reference_run, tmp_path, form):
    """A branch source written before layers were stacked is refused in one line before anything is written."""
    from moe_jax.errors import ConfigError
    from moe_jax.train.branching import points_dir

    source = tmp_path / "old"
    (source / "checkpoints" / "8").mkdir(parents=True)
    (points_dir(source) / "512" / "meta").mkdir(parents=True)  # a branch point at 512 tokens
    config = json.loads((reference_run[0] / "config.json").read_text())
    del config["model"]["scan_layers"]  # as written before layers were stacked
    (source / "config.json").write_text(json.dumps(config))
    spec = f"{source}:8" if form == "WORKDIR:STEP" else f"{source}@512"
    with pytest.raises(ConfigError, match="older moe_jax that kept one parameter tree per layer") as info:
        train(tiny_config(init_from=spec), tmp_path / "branch", data_module=FakeData)
    assert str(info.value).startswith(f"train.init_from={spec!r}: ") and "\n" not in str(info.value)
    assert not (tmp_path / "branch").exists()
