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


def triton_setting(value) -> str | bool:
    """model.ragged_dot_triton as 'auto', True or False (also from the strings 'true'/'false', any case)."""
    if isinstance(value, bool):
        return value
    names = {"auto": "auto", "true": True, "false": False}
    if isinstance(value, str) and value.lower() in names:
        return names[value.lower()]
    raise ConfigError(f"model.ragged_dot_triton = {value!r} is invalid; choose auto, true or false")


@contextlib.contextmanager
def ragged_dot_triton(enabled: bool):
    """Inside, JAX lowers jax.lax.ragged_dot for GPU through Pallas-Triton (its flag TRITON_FLAG).

    The flag is read when a computation is lowered, so the context must cover the jit call that
    compiles (not only the tracing of a function inside it)."""
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


def get_dispatch(name: str, tiles=(0, 0, 0), ragged_dot_triton="auto"):
    """The dispatch function called `name` (imported lazily; `auto` resolved for this backend).

    tiles = (tile_m, tile_k, tile_n) of the Pallas kernels (0 = per-shape default);
    ragged_dot_triton: 'auto' | True | False, whether `dropless` is lowered on GPU through JAX's
    Pallas-Triton ragged_dot (decided when traced, at the call's shapes: `triton_choice.py`).
    """
    name = resolve_dispatch(name)
    if name == "capacity":
        from moe_jax.kernels.capacity import capacity_moe as fn
    elif name == "dropless":
        from moe_jax.kernels.dropless import dropless_moe
        from moe_jax.kernels.triton_choice import with_triton_choice

        fn = with_triton_choice(dropless_moe, triton_setting(ragged_dot_triton))
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
