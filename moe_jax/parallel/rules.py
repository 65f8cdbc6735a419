"""The one table of logical axis → mesh axes, and the shardings it gives parameters, optimizer state and data.

Parameters carry logical axis names (`logical_axes` metadata on every nnx.Param); the optimizer's
moments are nnx.Param-shaped copies carrying the same metadata, so one walk over the train state
shards params and every optimizer-state leaf alike. Scalars and anything without metadata is replicated.
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from moe_jax.parallel.mesh import BATCH_AXES

# logical axis -> mesh axes (None = replicated). FSDP shards the model width, experts go over `expert`,
# tensor parallelism splits heads, FFN hidden units and the vocabulary. Layers (the scan axis) stay whole.
# Weights without an expert axis (attention, embeddings) are FSDP-sharded over `expert` as well, as the
# expert devices are data-parallel for them; expert weights use `expert` for E (first dimension wins).
RULES: dict[str, tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "vocab": ("tensor",),
    "embed": ("fsdp", "expert"),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv": None,
    "exp": ("expert",),
    "layers": None,
    "norm": None,  # norm scales/biases [D]: tiny, and applied elementwise to activations whose D is whole
}


def logical_spec(logical_axes, shape, mesh) -> P:
    """PartitionSpec of an array with `logical_axes` on `mesh`.

    A mesh axis is used once per array (first dimension wins). A dimension is split over the longest
    prefix of its mesh axes whose product divides it, so one the axes do not divide stays replicated
    (e.g. a 259-token vocabulary on tensor=2).
    """
    used, spec = set(), []
    for name, dim in zip(logical_axes, shape):
        axes = tuple(a for a in (RULES.get(name) or ()) if a not in used and mesh.shape[a] > 1)
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        if not axes:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh):
    """A pytree like `state` (params, optimizer state, rng; arrays or ShapeDtypeStructs) of NamedShardings."""
    replicated = NamedSharding(mesh, P())

    def one(leaf):
        if _is_variable(leaf):
            axes = leaf.get_metadata().get("logical_axes")
            value = leaf.get_value()
            sharding = replicated if axes is None else NamedSharding(mesh, logical_spec(axes, value.shape, mesh))
            return jax.tree.map(lambda _: sharding, leaf)
        return replicated

    return jax.tree.map(one, state, is_leaf=_is_variable)


def abstract_with_shardings(state, shardings):
    """ShapeDtypeStructs of `state` carrying `shardings` (the target of an Orbax restore or an AOT compile)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def batch_sharding(mesh) -> NamedSharding:
    """Sequences [B, ...] split over data · fsdp · expert."""
    return NamedSharding(mesh, P(RULES["batch"]))


def gathered(param):
    """The value of an nnx.Param as a matmul uses it: all-gathered over the batch axes (FSDP), still split over
    `tensor`. Under a mesh this makes XLA gather weights (and reduce-scatter their gradients) instead of
    resharding activations; without a mesh it is just the value. Inside nnx.scan the value lacks the
    leading `layers` axis its metadata names."""
    value = param[...]
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(mesh.axis_names) >= set(BATCH_AXES):
        return value
    axes = tuple(param.get_metadata().get("logical_axes") or ())
    if len(axes) == value.ndim + 1 and axes[0] == "layers":
        axes = axes[1:]
    if len(axes) != value.ndim:
        return value
    spec = logical_spec(axes, value.shape, mesh)
    keep = lambda entry: entry if entry == "tensor" or (isinstance(entry, tuple) and entry == ("tensor",)) else None  # noqa: E731
    return jax.lax.with_sharding_constraint(value, P(*(keep(e) for e in spec)))


def constrain(x, *logical_axes):
    """with_sharding_constraint by logical axes inside a jitted function run under a mesh; no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(mesh.axis_names) >= set(BATCH_AXES):
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(logical_axes, x.shape, mesh))
