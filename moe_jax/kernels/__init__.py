"""Token dispatch for MoE layers, selected by name. Every implementation has the signature

    fn(x [T, D], expert_idx [T, K] int, gates [T, K], w_gate [E, D, F], w_up [E, D, F],
       w_down [E, F, D], capacity: int | None) -> (y [T, D], kept [T, K] bool)

where y = Σ_k gates[t, k] · SwiGLU_{expert_idx[t, k]}(x[t]) over the kept assignments, and
capacity None means nothing drops. Dropping keeps the earliest assignments in token-major order.

`auto` is not an implementation: `resolve_dispatch` turns it into one for the running backend.
"""

from __future__ import annotations

import contextlib
import functools

from moe_jax.errors import ConfigError

DISPATCH_NAMES = ("capacity", "dropless", "onehot", "loop", "pallas", "megablox", "auto")
# Implementations that honour a capacity limit (the others never drop).
DROPPING = {"capacity": True, "onehot": True, "loop": True, "dropless": False, "pallas": False, "megablox": False}
AUTO_CHOICE = {"tpu": "pallas", "gpu": "dropless", "cpu": "capacity"}  # backend -> dispatch for `auto`
TRITON_FLAG = "jax_ragged_dot_use_gpu_pallas_triton_lowering"


def resolve_dispatch(name: str, backend: str | None = None) -> str:
    """The implementation `name` stands for: itself, or for `auto` the choice for `backend`
    (default: jax.default_backend()): TPU -> pallas, GPU -> dropless (ragged_dot), CPU -> capacity."""
    if name not in DISPATCH_NAMES:
        raise ConfigError(f"unknown dispatch {name!r}; choose one of {', '.join(DISPATCH_NAMES)}")
    if name != "auto":
        return name
    if backend is None:
        import jax

        backend = jax.default_backend()
    return AUTO_CHOICE.get(backend, "capacity")


@contextlib.contextmanager
def ragged_dot_triton(enabled: bool):
    """While tracing, lower jax.lax.ragged_dot on GPU through Pallas-Triton (the JAX flag TRITON_FLAG)."""
    import jax

    if not hasattr(jax.config, TRITON_FLAG):
        raise ConfigError(
            f"model.ragged_dot_triton = true needs JAX's {TRITON_FLAG}, which JAX {jax.__version__} lacks"
        )
    before = getattr(jax.config, TRITON_FLAG)
    jax.config.update(TRITON_FLAG, bool(enabled))
    try:
        yield
    finally:
        jax.config.update(TRITON_FLAG, before)


def _with_triton(fn):
    @functools.wraps(fn)
    def traced_with_flag(*args, **kwargs):
        with ragged_dot_triton(True):
            return fn(*args, **kwargs)

    return traced_with_flag


def get_dispatch(name: str, tiles=(0, 0, 0), ragged_dot_triton: bool = False):
    """The dispatch function called `name` (imported lazily; `auto` resolved for this backend).

    tiles = (tile_m, tile_k, tile_n) of the Pallas kernels (0 = per-shape default);
    ragged_dot_triton: trace `dropless` with the GPU Pallas-Triton ragged_dot lowering.
    """
    name = resolve_dispatch(name)
    if name == "capacity":
        from moe_jax.kernels.capacity import capacity_moe as fn
    elif name == "dropless":
        from moe_jax.kernels.dropless import dropless_moe as fn

        fn = _with_triton(fn) if ragged_dot_triton else fn
    elif name == "onehot":
        from moe_jax.kernels.onehot import onehot_moe as fn
    elif name == "loop":
        from moe_jax.kernels.reference import loop_moe as fn
    elif name == "pallas":
        from moe_jax.kernels.fused import pallas_moe

        fn = functools.partial(pallas_moe, tiles=tuple(tiles))
    else:
        from moe_jax.kernels.megablox import megablox_moe

        fn = functools.partial(megablox_moe, tiles=tuple(tiles))
    return fn
