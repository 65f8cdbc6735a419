"""model.ragged_dot_triton: 'auto' times ragged_dot with and without JAX's Pallas-Triton lowering
on GPU and keeps the faster (cached); tested with injected timings and a forced 'gpu' backend."""

import functools
import json

import jax
import numpy as np
import pytest

from moe_jax import cli
from moe_jax.errors import ConfigError
from moe_jax.kernels import TRITON_FLAG, get_dispatch, triton_setting
from moe_jax.kernels import triton_choice
from moe_jax.kernels.dropless import dropless_moe
from moe_jax.kernels.triton_choice import (CACHE_NAME, LayerShape, resolve_triton, time_layer,
                                           triton_lowering_problem, with_triton_choice)
from moe_jax.model.config import model_config, validate_model_config
from moe_jax.user_cache import cache_dir

SHAPE = LayerShape(tokens=64, d_model=16, ffn=24, experts=4, top_k=2, dtype="float32")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    """A private cache dir, no verdicts remembered from other tests, JAX's flag restored afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    triton_choice._VERDICTS.clear()
    before = getattr(jax.config, TRITON_FLAG)
    yield
    triton_choice._VERDICTS.clear()
    jax.config.update(TRITON_FLAG, before)


class FakeRunner:
    """runner(shape, triton) -> seconds from a table; counts the calls; may fail the flag-on run."""

    def __init__(self, off: float, on: float | None):
        self.seconds, self.calls = {False: off, True: on}, []

    def __call__(self, shape, triton):
        self.calls.append(triton)
        if self.seconds[triton] is None:
            raise ModuleNotFoundError("No module named 'jax._src.lax.pallas_lowerings'")
        return self.seconds[triton]


@pytest.mark.parametrize(("off", "on", "expected"), [(2.0, 1.0, True), (1.0, 2.0, False), (1.0, None, False)])
def test_auto_on_gpu_picks_the_faster_lowering(off, on, expected):
    runner = FakeRunner(off, on)
    assert resolve_triton("auto", SHAPE, backend="gpu", runner=runner) is expected
    assert runner.calls == [False, True]
    entry = json.loads((cache_dir() / CACHE_NAME).read_text())[SHAPE.key()]
    assert entry["triton"] is expected and entry["off_ms"] == 1e3 * off
    assert ("error" in entry) == (on is None) and ("pallas_lowerings" in entry.get("error", "pallas_lowerings"))


def test_cached_verdict_is_not_measured_again():
    assert resolve_triton("auto", SHAPE, backend="gpu", runner=FakeRunner(2.0, 1.0)) is True
    triton_choice._VERDICTS.clear()  # as in a new process: only the cache file remembers
    again = FakeRunner(1.0, 2.0)  # would say False if it were asked
    assert resolve_triton("auto", SHAPE, backend="gpu", runner=again) is True and again.calls == []
    other = LayerShape(**{**SHAPE.__dict__, "tokens": 128})  # another shape is measured on its own
    assert resolve_triton("auto", other, backend="gpu", runner=again) is False and again.calls == [False, True]
    key = SHAPE.key()
    assert jax.__version__ in key and "T64 D16 F24 E4 K2 float32" in key


def test_an_unwritable_cache_still_decides_and_remembers_in_the_process(monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache dir cannot be created
    runner = FakeRunner(2.0, 1.0)
    assert resolve_triton("auto", SHAPE, backend="gpu", runner=runner) is True
    assert resolve_triton("auto", SHAPE, backend="gpu", runner=runner) is True and len(runner.calls) == 2


def test_off_gpu_auto_is_false_without_measuring_and_explicit_values_hold():
    never = FakeRunner(None, None)
    assert resolve_triton("auto", SHAPE, backend="cpu", runner=never) is False
    assert resolve_triton("auto", SHAPE, backend="tpu", runner=never) is False and never.calls == []
    assert resolve_triton(False, SHAPE, backend="gpu", runner=never) is False
    assert resolve_triton("true", SHAPE, backend="cpu", runner=never) is True and never.calls == []
    assert not (cache_dir() / CACHE_NAME).exists()


def test_explicit_true_on_gpu_needs_a_lowering_jax_can_load():
    problem = triton_lowering_problem()  # JAX 0.10.2 has the flag but not its lowering module
    if problem:
        with pytest.raises(ConfigError, match="cannot lower ragged_dot through Pallas-Triton") as err:
            resolve_triton(True, SHAPE, backend="gpu")
        assert "\n" not in str(err.value)
    else:
        assert resolve_triton(True, SHAPE, backend="gpu") is True


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("AUTO", "auto"), ("true", True),
                                                 ("False", False), (True, True), (False, False)])
def test_setting_spellings(value, expected):
    assert triton_setting(value) == expected
    validate_model_config(model_config(ragged_dot_triton=value))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_setting_is_a_one_line_config_error(value):
    cfg = model_config()
    with cfg.ignore_type():
        cfg.ragged_dot_triton = value
    with pytest.raises(ConfigError, match="choose auto, true or false") as err:
        validate_model_config(cfg)
    assert "\n" not in str(err.value) and repr(value) in str(err.value)


def moe_args(t=12):
    """x [T, 16], expert_idx/gates [T, 2], 4 experts of width 24 (numpy: no eager JAX ops to recompile
    when a test changes JAX's flag, which is part of every cache key)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 4, size=(t, 2), dtype=np.int32)
    normal = lambda *shape: rng.standard_normal(shape, np.float32) / np.sqrt(shape[-2])  # noqa: E731
    return (normal(t, 16), idx, rng.uniform(0.1, 1.0, (t, 2)).astype(np.float32),
            normal(4, 16, 24), normal(4, 16, 24), normal(4, 24, 16))


@pytest.mark.parametrize("faster", [True, False])
def test_the_verdict_is_made_at_trace_time_and_sets_the_flag_on_gpu(faster):
    args = moe_args()
    want, _ = jax.jit(dropless_moe)(*args)  # the layer unwrapped
    runner = FakeRunner(2.0, 1.0) if faster else FakeRunner(1.0, 2.0)
    jax.config.update(TRITON_FLAG, not faster)
    fn = jax.jit(with_triton_choice(dropless_moe, "auto", backend="gpu", runner=runner))
    y, _ = fn(*args)
    assert getattr(jax.config, TRITON_FLAG) is faster  # applied before the traced step is lowered
    shape = LayerShape(12, 16, 24, 4, 2, "float32")  # the call's own shapes were measured
    assert list(json.loads((cache_dir() / CACHE_NAME).read_text())) == [shape.key()]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_real_measurement_runs_inside_a_trace():
    """The default runner times dropless forward + backward eagerly while an outer jit traces the layer."""
    args = moe_args()
    layer = with_triton_choice(dropless_moe, "auto", backend="gpu", runner=functools.partial(time_layer, repeats=1))
    fn = jax.jit(jax.grad(lambda x: layer(x, *args[1:])[0].sum()))
    grad = fn(args[0])
    entry = json.loads((cache_dir() / CACHE_NAME).read_text())[LayerShape(12, 16, 24, 4, 2, "float32").key()]
    assert entry["off_ms"] > 0 and (entry.get("on_ms", 0) > 0) != ("error" in entry)  # CPU ignores the flag
    want = jax.jit(jax.grad(lambda x: dropless_moe(x, *args[1:])[0].sum()))(args[0])  # the layer unwrapped
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5)


def test_cpu_dispatch_leaves_the_flag_alone():
    jax.config.update(TRITON_FLAG, False)
    y, _ = jax.jit(get_dispatch("dropless", ragged_dot_triton=True), static_argnums=6)(*moe_args(), None)
    assert getattr(jax.config, TRITON_FLAG) is False
    np.testing.assert_allclose(y, jax.jit(dropless_moe)(*moe_args())[0], rtol=1e-6, atol=1e-6)


def test_model_info_prints_the_measured_choice_next_to_the_dispatch(monkeypatch, capsys):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    runner = FakeRunner(2.0, 1.0)
    monkeypatch.setattr(triton_choice, "time_layer", runner)
    argv = ["model-info", "--config", "tiny", "--config.model.dispatch=auto", "--json"]
    assert cli.main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dispatch"] == "dropless" and info["ragged_dot_triton"] is True and runner.calls == [False, True]
    key = LayerShape(16 * 128, 128, 384, 8, 1, "float32").key()  # train.batch_size x data.seq_len tokens
    assert json.loads((cache_dir() / CACHE_NAME).read_text())[key]["triton"] is True


def test_a_run_started_with_the_old_boolean_default_resumes(tmp_path):
    """Older workdirs recorded model.ragged_dot_triton = false; the lowering may differ on resume."""
    from moe_jax.configlib import load_config
    from moe_jax.train import workdir as run_dir

    config = load_config("tiny")
    run_dir.claim(tmp_path, config)
    stored = json.loads((tmp_path / run_dir.CONFIG_FILE).read_text())
    assert stored["model"]["ragged_dot_triton"] == "auto"
    stored["model"]["ragged_dot_triton"] = False
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(stored))
    run_dir.check_config_file(tmp_path, config)  # accepted
    run_dir.check_config_file(tmp_path, load_config("tiny", ["--config.model.ragged_dot_triton=true"]))
