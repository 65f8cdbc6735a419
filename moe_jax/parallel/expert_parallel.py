"""Expert-parallel MoE dispatch inside `jax.shard_map`, with the paper's per-device capacity.

Every device holds G/n token groups (n = data·fsdp·expert devices the batch is split over) and E/X
experts (X = the `expert` axis). Per device and group: route → fill [E, C, D] buffers with capacity
C = int(CF · T_group · k / E) over the group's LOCAL tokens → all_to_all over `expert` (each peer
receives the buffers of its own experts from every peer) → local SwiGLU experts → all_to_all back →
combine. This is exactly `capacity_moe` applied to each group, so one device with
model.token_groups = G reproduces a mesh run (tests/test_parallel.py).

Dropless: on CPU, worst-case buffers (C = T_group) through the same all_to_all; on TPU/GPU the
assignments travel with `jax.lax.ragged_all_to_all`, whose offsets `ragged_offsets` computes.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moe_jax.kernels.capacity import capacity_of, capacity_slots, combine_from_buffers, dispatch_to_buffers
from moe_jax.kernels.common import swiglu
from moe_jax.parallel.mesh import BATCH_AXES

EXPERT_PARALLEL_DISPATCHES = ("capacity", "dropless", "pallas")


def batch_mesh():
    """The mesh of the current `jax.set_mesh` context if it splits the batch over > 1 device, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return None
    return mesh if math.prod(mesh.shape[a] for a in BATCH_AXES) > 1 else None


def ragged_offsets(counts, me):
    """Offsets of `jax.lax.ragged_all_to_all` for device `me` from the global send-count matrix.

    counts [X, X] int: counts[i, j] = rows device i sends to device j, stored contiguously in j order.
    Returns (input_offsets, send_sizes, output_offsets, recv_sizes), each [X]: where `me`'s rows for j
    start, how many, where they land in j's output (after the rows of devices before `me`), and how
    many rows `me` receives from each device.
    """
    send = counts[me]
    input_offsets = jnp.cumsum(send) - send
    output_offsets = (jnp.cumsum(counts, axis=0) - counts)[me]
    return input_offsets, send, output_offsets, counts[:, me]


def _exchange_and_compute(buffers, w_gate, w_up, w_down):
    """buffers [Gl, E, C, D] of this device -> expert outputs [Gl, E, C, D] for the same slots.

    all_to_all over `expert` sends the slots of peer j's experts to peer j; every peer runs its El local
    experts on the slots of all peers' groups at once, then the outputs travel back.
    """
    gl, e, c, d = buffers.shape
    x = jax.lax.axis_size("expert")
    el = e // x
    if x == 1:
        return swiglu(buffers.transpose(1, 0, 2, 3).reshape(e, gl * c, d), w_gate, w_up, w_down).reshape(
            e, gl, c, d).transpose(1, 0, 2, 3)
    b = buffers.reshape(gl, x, el, c, d)  # [Gl, X(destination), El, C, D]
    b = jax.lax.all_to_all(b, "expert", split_axis=1, concat_axis=1, tiled=True)  # [Gl, X(source), El, C, D]
    h = swiglu(b.transpose(2, 0, 1, 3, 4).reshape(el, gl * x * c, d), w_gate, w_up, w_down)  # [El, Gl·X·C, D]
    h = h.reshape(el, gl, x, c, d).transpose(1, 2, 0, 3, 4)  # [Gl, X(source), El, C, D]
    h = jax.lax.all_to_all(h, "expert", split_axis=1, concat_axis=1, tiled=True)  # [Gl, X(expert owner), El, C, D]
    return h.reshape(gl, e, c, d)


def _local_moe(x, expert_idx, gates, w_gate, w_up, w_down, *, capacity):
    """Per device: x [Gl, Tg, D], expert_idx/gates [Gl, Tg, K], local weights [El, D, F] -> (y, kept)."""
    gl, tg, d = x.shape
    k = expert_idx.shape[-1]
    e = w_gate.shape[0] * jax.lax.axis_size("expert")
    c = capacity_of(tg, capacity)
    if c == 0:  # every assignment overflows
        return jnp.zeros_like(x), jnp.zeros(expert_idx.shape, bool)
    slot, assignment, kept = jax.vmap(lambda i: capacity_slots(i, e, c))(expert_idx)
    buffers = jax.vmap(lambda xg, s, a: dispatch_to_buffers(xg, s, a, k, e, c))(x, slot, assignment)  # [Gl, E, C, D]
    out = _exchange_and_compute(buffers, w_gate, w_up, w_down)
    y = jax.vmap(combine_from_buffers)(out, slot, assignment, gates)  # [Gl, Tg, D]
    return y, kept.reshape(gl, tg, k)


def _segment_ids(sizes, length: int):
    """[length] id of the segment each row falls in, for consecutive segments of `sizes` [N] (N = past the end)."""
    ends = jnp.cumsum(sizes)
    return jnp.searchsorted(ends, jnp.arange(length), side="right")


def _local_moe_ragged(x, expert_idx, gates, w_gate, w_up, w_down, *, exchange, grouped_matmul):
    """Dropless per device with variable-size exchanges: x [Gl, Tg, D], expert_idx/gates [Gl, Tg, K] -> (y, kept).

    Assignments sorted by expert travel to their expert's device with `exchange` (ragged_all_to_all), are
    regrouped by local expert for grouped matmuls (`grouped_matmul`: `jax.lax.ragged_dot`, or the Pallas
    `gmm` for dispatch 'pallas'), and travel back the same way.
    """
    gl, tg, d = x.shape
    k = expert_idx.shape[-1]
    n, el = gl * tg, w_gate.shape[0]
    nx, me = jax.lax.axis_size("expert"), jax.lax.axis_index("expert")
    e = el * nx
    flat_e = expert_idx.reshape(-1).astype(jnp.int32)  # [A = N·K], token-major
    order = jnp.argsort(flat_e, stable=True)  # [A] sorted by expert = by destination device
    xs = jnp.take(x.reshape(n, d), order // k, axis=0)  # [A, D]
    per_expert = jax.lax.all_gather(jnp.bincount(flat_e, length=e).astype(jnp.int32), "expert")  # [X, E]
    counts = per_expert.reshape(nx, nx, el).sum(axis=-1)  # [X(source), X(destination)]
    inp, send, out_off, recv = ragged_offsets(counts, me)
    received = exchange(xs, jnp.zeros((nx * n * k, d), xs.dtype), inp, send, out_off, recv, axis_name="expert")
    mine = jax.lax.dynamic_slice_in_dim(per_expert, me * el, el, axis=1)  # [X(source), El] rows per local expert
    local_e = _segment_ids(mine.reshape(-1), nx * n * k) % el  # [X·A] local expert of each received row
    local_e = jnp.where(jnp.arange(nx * n * k) < recv.sum(), local_e, el)  # unused rows sort last
    regroup = jnp.argsort(local_e, stable=True)
    rows, sizes = jnp.take(received, regroup, axis=0), mine.sum(axis=0)  # [X·A, D], [El]
    out = swiglu(rows, w_gate, w_up, w_down, matmul=lambda a, w: grouped_matmul(a, w, sizes))  # [X·A, D]
    done = jnp.take(out, jnp.argsort(regroup), axis=0)  # [X·A, D] received order
    b_inp, b_send, b_out, b_recv = ragged_offsets(counts.T, me)  # the way back: every row to where it came from
    back = exchange(done, jnp.zeros((n * k, d), done.dtype), b_inp, b_send, b_out, b_recv, axis_name="expert")
    y = jnp.take(back, jnp.argsort(order), axis=0)  # [A, D] token-major
    y = (y * gates.reshape(n * k, 1).astype(y.dtype)).reshape(n, k, d).sum(axis=1)
    return y.reshape(gl, tg, d), jnp.ones(expert_idx.shape, bool)


def uses_ragged_exchange(capacity) -> bool:
    """Dropless dispatch on TPU/GPU exchanges exactly the routed rows; CPU has no ragged_all_to_all."""
    return capacity is None and jax.default_backend() in ("tpu", "gpu")


def expert_parallel_moe(x, expert_idx, gates, w_gate, w_up, w_down, capacity: int | None, mesh, *, exchange=None,
                        grouped_matmul=None):
    """x [G, Tg, D], expert_idx/gates [G, Tg, K] (G split over data·fsdp·expert), weights [E, D, F]/[E, F, D]
    (E split over `expert`) -> (y [G, Tg, D], kept [G, Tg, K]); capacity per group (None = dropless).

    Dropless uses worst-case buffers (C = Tg) on CPU and `jax.lax.ragged_all_to_all` on TPU/GPU;
    `exchange` replaces the ragged exchange (tests emulate it on CPU). `grouped_matmul(lhs, rhs, sizes)`
    computes the local experts of the ragged path (default `jax.lax.ragged_dot`).
    """
    tokens, experts = P(BATCH_AXES), P("expert")
    if exchange is None and uses_ragged_exchange(capacity):
        exchange = jax.lax.ragged_all_to_all
    if exchange:
        local = partial(_local_moe_ragged, exchange=exchange, grouped_matmul=grouped_matmul or jax.lax.ragged_dot)
    else:
        local = partial(_local_moe, capacity=capacity)
    # A Pallas kernel's outputs carry no varying-axes type, so the check is off when one computes the experts.
    fn = jax.shard_map(local, mesh=mesh, check_vma=grouped_matmul is None,
                       in_specs=(tokens, tokens, tokens, experts, experts, experts), out_specs=(tokens, tokens))
    return fn(x, expert_idx, gates, w_gate, w_up, w_down)
