"""Compile a config's train step ahead of time for a mesh, from abstract shapes (nothing is allocated).

    report = compile_train_step(config, {"fsdp": 16, "expert": 4})   # needs 64 devices (simulated on CPU)

Reports per-device bytes of parameters and optimizer state (from their shardings), the compiled
program's temporaries (XLA's memory analysis) and the compile time.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.parallel.mesh import AXES, build_mesh, mesh_config, resolve_token_groups, validate_mesh
from moe_jax.parallel.rules import abstract_with_shardings, batch_sharding


def per_device_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard of each leaf)."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total


def abstract_train_inputs(config, mesh):
    """(train_step, abstract state, abstract batch) of `config` on `mesh`, everything sharded by the rules."""
    from flax import nnx

    from moe_jax.model import build_model
    from moe_jax.train.optimizer import make_optimizer
    from moe_jax.train.steps import _init_fn, make_train_step, train_state_shardings

    sizes = dict(mesh.shape)
    model_cfg = resolve_token_groups(config.model, sizes)
    optimizer = make_optimizer(config.train)
    init = _init_fn(build_model, model_cfg, config.train.seed, optimizer)
    state_sharding, _ = train_state_shardings(init, mesh)
    abstract_state, abstract_rest = jax.eval_shape(init)
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0))), nnx.Param, ...)
    rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract_rest)  # non-parameter state (empty today)
    step = make_train_step(graphdef, rest, optimizer, mesh=mesh, state_sharding=state_sharding, donate=True)
    b, s = config.train.batch_size, config.data.seq_len
    tokens = jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=batch_sharding(mesh))
    batch = {"inputs": tokens, "targets": tokens, "weights": jax.ShapeDtypeStruct((b, s), jnp.float32, sharding=batch_sharding(mesh))}
    return step, abstract_with_shardings(abstract_state, state_sharding), batch


def compile_train_step(config, sizes: dict[str, int], devices=None) -> dict:
    """AOT-compile the train step of `config` on a mesh of `sizes` over `devices` (default: all); the report."""
    devices = list(jax.devices() if devices is None else devices)
    mesh_cfg = mesh_config(**{axis: sizes.get(axis, 1) for axis in AXES})
    t = config.train
    validate_mesh(mesh_cfg, config.model, [t.batch_size], len(devices))
    mesh = build_mesh(mesh_cfg, devices)
    step, state, batch = abstract_train_inputs(config, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch, jax.ShapeDtypeStruct((), jnp.float32)).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {
        "devices": len(devices),
        "mesh": {axis: int(mesh.shape[axis]) for axis in AXES},
        "batch_size": t.batch_size, "seq_len": config.data.seq_len,
        "per_device_bytes": {
            "params": per_device_bytes(state["params"]),
            "optimizer": per_device_bytes(state["opt_state"]),
            "temp": int(memory.temp_size_in_bytes) if memory is not None else None,
            "arguments": int(memory.argument_size_in_bytes) if memory is not None else None,
        },
        "compile_s": compile_s,
    }
