"""`model.ragged_dot_triton`: whether `dropless` lowers jax.lax.ragged_dot on GPU through Pallas-Triton.

    True / False     that lowering, or XLA's default one
    'auto'           off GPU: False, nothing measured. On GPU: one forward + backward of the layer
                     at its shapes is timed with and without JAX's flag, and the faster wins; the
                     verdict is kept per (device kind, JAX version, shapes) in the user cache
                     (`ragged_dot_triton.json`, see `moe_jax.user_cache`) and in this process.

The choice is made when the layer is traced, where its shapes are known. JAX reads the flag when
it lowers, after tracing, so on GPU the choice is applied by setting the flag process-wide: the
jit call that traced the layer compiles with it (its next call retraces once, because the flag is
part of JAX's jit cache key). A flag-on run that fails (JAX 0.10.2 ships the flag without the
Pallas-Triton lowering module) is a verdict of False, with the error kept next to it.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.errors import ConfigError
from moe_jax.kernels import TRITON_FLAG, ragged_dot_triton, triton_setting
from moe_jax.user_cache import read_table, write_table

CACHE_NAME = "ragged_dot_triton.json"
_VERDICTS: dict[str, bool] = {}  # this process's verdicts: an unwritable cache never re-measures here


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """The shapes one `dropless` call runs at: x [T, D], expert_idx [T, K], W_gate [E, D, F]."""

    tokens: int
    d_model: int
    ffn: int
    experts: int
    top_k: int
    dtype: str

    @classmethod
    def of(cls, x, expert_idx, w_gate) -> LayerShape:
        return cls(x.shape[0], x.shape[1], w_gate.shape[2], w_gate.shape[0], expert_idx.shape[1],
                   jnp.dtype(x.dtype).name)

    def key(self) -> str:
        """Cache key: device kind, JAX version and the shapes."""
        device = getattr(jax.devices()[0], "device_kind", jax.default_backend())
        return (f"{device}|jax {jax.__version__}|T{self.tokens} D{self.d_model} F{self.ffn} "
                f"E{self.experts} K{self.top_k} {self.dtype}")


def time_layer(shape: LayerShape, triton: bool, repeats: int = 5) -> float:
    """Best seconds of one forward + backward of `dropless` at `shape`, lowered with the flag on or off."""
    from moe_jax.kernels.dropless import dropless_moe

    t, d, f, e, k = shape.tokens, shape.d_model, shape.ffn, shape.experts, shape.top_k
    rng = np.random.default_rng(0)  # numpy inputs: no op-by-op JAX dispatch when run inside a trace
    normal = lambda *s: rng.standard_normal(s, np.float32).astype(jnp.dtype(shape.dtype))  # noqa: E731
    x, weights = normal(t, d), [normal(e, d, f), normal(e, d, f), normal(e, f, d)]
    idx = rng.integers(0, e, (t, k), dtype=np.int32)  # [T, K] random routing
    gates = rng.uniform(size=(t, k)).astype(np.float32)

    def loss(x, gates, *weights):
        return jnp.sum(dropless_moe(x, idx, gates, *weights)[0].astype(jnp.float32))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    with ragged_dot_triton(triton):  # covers compilation: the flag is part of the jit key
        jax.block_until_ready(step(x, gates, *weights))  # compile and warm up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(step(x, gates, *weights))
            best = min(best, time.perf_counter() - start)
    return best


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def measure(shape: LayerShape, runner=None) -> dict:
    """{'triton': flag-on faster, 'off_ms', 'on_ms'} from runner(shape, triton) -> seconds;
    a flag-on run that raises gives {'triton': False, 'off_ms', 'error'}."""
    runner = runner or time_layer
    off = runner(shape, False)
    try:
        on = runner(shape, True)
    except Exception as err:  # noqa: BLE001 — any failure of the optional lowering means "don't use it"
        return {"triton": False, "off_ms": round(1e3 * off, 4), "error": _one_line(err)}
    return {"triton": bool(on < off), "off_ms": round(1e3 * off, 4), "on_ms": round(1e3 * on, 4)}


def cached_verdict(shape: LayerShape, runner=None) -> dict:
    """The cached measurement of `shape` on this device and JAX version, measured and stored when absent."""
    key = shape.key()
    table = read_table(CACHE_NAME)
    entry = table.get(key)
    if not (isinstance(entry, dict) and isinstance(entry.get("triton"), bool)):
        with jax.ensure_compile_time_eval():  # run eagerly, also while the layer is being traced
            entry = measure(shape, runner)
        table = read_table(CACHE_NAME)  # another process may have added shapes meanwhile
        table[key] = entry
        write_table(CACHE_NAME, table)  # unwritable: remembered in this process only
    return entry


def resolve_triton(setting, shape: LayerShape, backend: str | None = None, runner=None) -> bool:
    """The lowering `setting` ('auto' | True | False) stands for at `shape` on `backend` (default: JAX's).

    runner(shape, triton) -> seconds times the layer (default `time_layer`); True on a GPU where JAX
    cannot lower that way is a one-line ConfigError."""
    setting = triton_setting(setting)
    on_gpu = (backend or jax.default_backend()) == "gpu"
    if setting is True and on_gpu and triton_lowering_problem():
        raise ConfigError(f"model.ragged_dot_triton = true, but JAX {jax.__version__} cannot lower ragged_dot "
                          f"through Pallas-Triton ({triton_lowering_problem()}); use auto or false")
    if setting != "auto" or not on_gpu:
        return setting is True
    key = shape.key()
    if key not in _VERDICTS:
        _VERDICTS[key] = cached_verdict(shape, runner)["triton"]
    return _VERDICTS[key]


@functools.cache
def triton_lowering_problem() -> str | None:
    """Why JAX cannot lower ragged_dot through Pallas-Triton (None if it can): a tiny ragged_dot is
    lowered for CUDA under the flag, without running it (works on any host)."""
    if not hasattr(jax.config, TRITON_FLAG):
        return f"JAX {jax.__version__} has no {TRITON_FLAG}"
    args = (jax.ShapeDtypeStruct((16, 16), jnp.float32), jax.ShapeDtypeStruct((2, 16, 16), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32))
    try:
        with ragged_dot_triton(True):
            jax.jit(jax.lax.ragged_dot).trace(*args).lower(lowering_platforms=("cuda",))
    except Exception as err:  # noqa: BLE001
        return _one_line(err)
    return None


def apply_triton(enabled: bool) -> None:
    """Set JAX's flag process-wide: it is read when the jit call that traced the layer lowers it."""
    if hasattr(jax.config, TRITON_FLAG) and getattr(jax.config, TRITON_FLAG) != enabled:
        jax.config.update(TRITON_FLAG, enabled)


def with_triton_choice(fn, setting, backend: str | None = None, runner=None):
    """The dispatch `fn` (dropless) with `setting` resolved at its shapes when traced, and applied on GPU."""

    @functools.wraps(fn)
    def dispatch(x, expert_idx, gates, w_gate, w_up, w_down, capacity=None):
        here = backend or jax.default_backend()
        enabled = resolve_triton(setting, LayerShape.of(x, expert_idx, w_gate), here, runner)
        if here == "gpu":
            apply_triton(enabled)
        return fn(x, expert_idx, gates, w_gate, w_up, w_down, capacity)

    return dispatch
