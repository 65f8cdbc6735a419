"""The `config.mesh` section and the device mesh it describes: axes data, fsdp, expert, tensor.

    mesh = build_mesh(config.mesh)          # jax.sharding.Mesh over all devices, Auto axis types

Axis types are Auto (not the Explicit default of current `jax.make_mesh`): parameters and the batch
get shardings from `moe_jax.parallel.rules`, and XLA's partitioner propagates them through the model,
so the model code needs no per-op sharding annotations (docs/parallelism.md).
"""

from __future__ import annotations

import math


from moe_jax.errors import ConfigError

AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")  # the batch is split over these; 'tensor' peers see the same tokens


def mesh_config(**overrides) -> "ml_collections.ConfigDict":
    """Defaults of `config.mesh`: every device data-parallel. One size may be -1 = the remaining devices."""
    import ml_collections  # here, so that the kernels' accelerator check runs without it

    c = ml_collections.ConfigDict()
    c.data = -1  # data-parallel replicas: parameters replicated, batch split (-1 = the devices left over)
    c.fsdp = 1  # fully-sharded data parallel: batch split, parameters and optimizer state sharded on `embed`
    c.expert = 1  # expert parallelism: batch split, experts sharded; tokens travel by all_to_all
    c.tensor = 1  # tensor parallelism inside attention heads and FFN hidden units (batch not split)
    for key, value in overrides.items():
        if key not in c:
            raise ConfigError(f"unknown mesh field {key!r}; valid fields: {', '.join(AXES)}")
        c[key] = value
    return c


def _describe(sizes: dict) -> str:
    return " × ".join(f"{axis}={sizes[axis]}" for axis in AXES)


def mesh_shape(mesh_cfg, device_count: int) -> dict[str, int]:
    """{axis: size} with -1 resolved; ConfigError naming the sizes and the device count otherwise."""
    sizes = {axis: mesh_cfg[axis] for axis in AXES}
    bad = [a for a, s in sizes.items() if isinstance(s, bool) or not isinstance(s, int) or (s < 1 and s != -1)]
    if bad:
        raise ConfigError(f"mesh.{bad[0]} = {sizes[bad[0]]!r} must be a positive integer or -1 (= the rest)")
    rest = [a for a, s in sizes.items() if s == -1]
    if len(rest) > 1:
        raise ConfigError(f"mesh sizes {_describe(sizes)}: only one axis may be -1 (= the rest), got {', '.join(rest)}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if rest and device_count % known == 0:
        sizes[rest[0]] = device_count // known
    if math.prod(sizes.values()) != device_count:
        raise ConfigError(f"mesh sizes {_describe(sizes)} do not multiply to the {device_count} devices; "
                          f"choose sizes whose product is {device_count} (one may be -1 = the rest)")
    return sizes


def batch_shards(sizes: dict[str, int]) -> int:
    """How many devices the batch is split over: data · fsdp · expert."""
    return math.prod(sizes[a] for a in BATCH_AXES)


def validate_mesh(mesh_cfg, model_cfg, batch_sizes, device_count: int) -> dict[str, int]:
    """Check a mesh section against the devices, the model and the batch sizes; returns the resolved sizes."""
    sizes = mesh_shape(mesh_cfg, device_count)
    m = model_cfg
    if m.experts > 1 and m.experts % sizes["expert"]:
        raise ConfigError(f"model.experts = {m.experts} is not divisible by mesh.expert = {sizes['expert']}; "
                          f"use an expert axis that divides {m.experts}")
    shards = batch_shards(sizes)
    groups = m.token_groups or shards
    if groups % shards:
        raise ConfigError(f"model.token_groups = {m.token_groups} is not a multiple of the {shards} devices the "
                          f"batch is split over ({_describe(sizes)}); use 0 (= {shards}) or a multiple")
    for size in batch_sizes:
        if int(size) % groups:
            what = f"{groups} devices the batch is split over" if groups == shards else f"{groups} token groups"
            raise ConfigError(f"batch size {int(size)} is not divisible by the {what} (mesh {_describe(sizes)}); "
                              f"use a multiple of {groups}")
    return sizes


def resolve_token_groups(model_cfg, sizes: dict[str, int]):
    """A copy of the model section with token_groups = 0 replaced by the mesh's batch shards."""
    resolved = model_cfg.copy_and_resolve_references()
    resolved.token_groups = model_cfg.token_groups or batch_shards(sizes)
    return resolved


def build_mesh(mesh_cfg, devices=None):
    """A jax.sharding.Mesh over `devices` (default: all) with the four axes, all of AxisType.Auto."""
    import jax
    from jax.sharding import AxisType

    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
