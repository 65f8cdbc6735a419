"""Run in a subprocess with 8 simulated CPU devices by tests/test_parallel.py; prints one JSON object.

    python tests/mesh_child.py equality capacity/fsdp8 step/expert8 one_group   # sharded vs one device
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from moe_jax.model import build_model, model_config  # noqa: E402
from moe_jax.parallel.mesh import build_mesh, mesh_config  # noqa: E402
from moe_jax.parallel.rules import batch_sharding, state_shardings  # noqa: E402
from moe_jax.train.config import train_config  # noqa: E402
from moe_jax.train.optimizer import make_optimizer  # noqa: E402
from moe_jax.train.steps import _forward_loss, init_train_state, make_train_step  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train_helpers import kept_buffers  # noqa: E402

MESHES = {"data2_expert4": dict(data=2, expert=4), "fsdp8": dict(data=1, fsdp=8), "expert8": dict(data=1, expert=8),
          "fsdp2_expert4": dict(data=1, fsdp=2, expert=4),
          "data2_expert2_tensor2": dict(data=2, expert=2, tensor=2)}  # 2 token groups per device, tensor peers
B, S, V = 16, 16, 64


def tiny(**overrides):
    base = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=2, head_dim=16, ffn_hidden=48, experts=8,
                token_groups=8, capacity_factor_train=1.0)
    return model_config(**{**base, **overrides})


def batch():
    rng = np.random.default_rng(0)
    return {"inputs": rng.integers(0, V, (B, S)).astype(np.int32), "targets": rng.integers(0, V, (B, S)).astype(np.int32),
            "weights": rng.uniform(0.5, 1.0, (B, S)).astype(np.float32)}


def rel(a, b) -> float:
    """Largest per-leaf ||a - b|| / ||b|| over two pytrees."""
    out = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)))
    return out


def loss_and_grads(cfg, mesh=None):
    """(loss, dropped fraction, grads, compiled HLO text) of one value_and_grad, sharded by the rules on `mesh`."""
    graphdef, params, rest = nnx.split(build_model(cfg, nnx.Rngs(0)), nnx.Param, ...)
    fn = jax.jit(lambda p, b: jax.value_and_grad(_forward_loss, has_aux=True)(p, graphdef, rest, b, True))
    data = batch()
    if mesh is None:
        (loss, (_, aux)), grads = fn(params, data)
        return float(loss), float(aux["dropped_fraction"]), grads, ""
    params = jax.device_put(params, state_shardings(params, mesh))
    data = jax.device_put(data, batch_sharding(mesh))
    with jax.set_mesh(mesh):
        (loss, (_, aux)), grads = fn(params, data)
        hlo = fn.lower(params, data).compile().as_text()
    return float(loss), float(aux["dropped_fraction"]), grads, hlo


def train_step_result(cfg, mesh=None) -> dict:
    """One real train step (sharded by the rules and donated under a mesh): its metrics, the state before and
    after it on the host, and the paths of input buffers the step left alive (donation frees them)."""
    opt = make_optimizer(train_config())
    graphdef, rest, state = init_train_state(build_model, cfg, 0, opt, mesh=mesh)
    before = jax.tree.map(np.array, state)  # copies: a zero-copy host view would pin a buffer and block donation
    kwargs = {} if mesh is None else dict(mesh=mesh, state_sharding=state_shardings(state, mesh), donate=True)
    step = make_train_step(graphdef, rest, opt, **kwargs)
    data = batch() if mesh is None else jax.device_put(batch(), batch_sharding(mesh))
    new_state, out = step(state, data, np.float32(1e-3))
    return dict(loss=float(out["loss"]), grad_norm=float(out["grad_norm"]), before=before,
                after=jax.device_get(new_state), kept=kept_buffers(state))


def compare_steps(single: dict, sharded: dict) -> dict:
    """Relative differences of a sharded train step from the one-device step; Adam's first moment after one
    step is (1 - β1) · the clipped gradient, so `grads_rel` compares the gradients leaf by leaf."""
    adam = lambda r: r["after"]["opt_state"].inner_state[1][0]  # noqa: E731
    update = lambda r: jax.tree.map(np.subtract, r["after"]["params"], r["before"]["params"])  # noqa: E731
    return dict(loss_rel=abs(sharded["loss"] / single["loss"] - 1),
                grad_norm_rel=abs(sharded["grad_norm"] / single["grad_norm"] - 1),
                grads_rel=rel(adam(sharded).mu, adam(single).mu),
                second_moment_rel=rel(adam(sharded).nu, adam(single).nu),
                params_rel=rel(sharded["after"]["params"], single["after"]["params"]),
                update_rel=rel(update(sharded), update(single)), kept=sharded["kept"], kept_single=single["kept"])


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *, axis_name):
    """jax.lax.ragged_all_to_all built from all_gathers (XLA:CPU has no ragged-all-to-all)."""
    del recv_sizes
    me = jax.lax.axis_index(axis_name)
    ops = jax.lax.all_gather(operand, axis_name)  # [X, A, D]
    start, size, src = (jax.lax.all_gather(a, axis_name)[:, me] for a in (output_offsets, send_sizes, input_offsets))
    r = jnp.arange(output.shape[0])
    inside = (r[None] >= start[:, None]) & (r[None] < (start + size)[:, None])  # [X, R]
    peer = jnp.argmax(inside, axis=0)
    row = jnp.clip(src[peer] + r - start[peer], 0, operand.shape[0] - 1)
    return jnp.where(inside.any(axis=0)[:, None], ops[peer, row], output)


def ragged(name: str, grouped_matmul=None) -> dict:
    """The ragged dropless exchange (emulated) vs the single-device dropless dispatch: outputs and gradients.
    `grouped_matmul` computes each device's local experts (default ragged_dot; the Pallas gmm for 'pallas')."""
    from moe_jax.kernels.dropless import dropless_moe
    from moe_jax.parallel.expert_parallel import expert_parallel_moe

    mesh = build_mesh(mesh_config(**MESHES[name]))
    g, tg, d, f, e, k = 8, 12, 8, 6, 8, 2
    keys = jax.random.split(jax.random.key(1), 6)
    x = jax.random.normal(keys[0], (g, tg, d))
    idx = jnp.stack([jax.random.permutation(kk, e)[:k] for kk in jax.random.split(keys[1], g * tg)]).reshape(g, tg, k)
    idx = jnp.where(idx == 3, 0, idx)  # uneven: expert 3 gets nothing, expert 0 twice as much
    idx = jnp.where((idx[..., :1] == idx[..., 1:]) & (jnp.arange(k) == 1), 5, idx)  # keep the k choices distinct
    gates = jax.random.uniform(keys[2], (g, tg, k))
    w = [jax.random.normal(kk, shape) for kk, shape in zip(keys[3:], [(e, d, f), (e, d, f), (e, f, d)])]
    probe = jax.random.normal(keys[5], (g, tg, d))

    def single(x, gates, *w):
        y, _ = dropless_moe(x.reshape(-1, d), idx.reshape(-1, k), gates.reshape(-1, k), *w)
        return jnp.sum(y.reshape(g, tg, d) * probe)

    def sharded(x, gates, *w):
        y, _ = expert_parallel_moe(x, idx, gates, *w, None, mesh, exchange=emulated_ragged_all_to_all,
                                   grouped_matmul=grouped_matmul)
        return jnp.sum(y * probe)

    v0, g0 = jax.value_and_grad(single, argnums=(0, 1, 2, 3, 4))(x, gates, *w)
    with jax.set_mesh(mesh):
        v1, g1 = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3, 4)))(x, gates, *w)
    return dict(value_rel=abs(float(v1) / float(v0) - 1), grads_rel=rel(g1, g0))


def equality(cases: list[str]) -> dict:
    """cases: 'DISPATCH/MESH' (MESH a key of MESHES) or 'step/MESH' (a real train step) or 'one_group'."""
    result, reference = {}, {}
    for case in cases:
        kind, _, name = case.partition("/")
        if kind == "one_group":
            loss, dropped, _, _ = loss_and_grads(tiny(token_groups=1))
            result[case] = dict(loss=loss, dropped=dropped)
            continue
        if kind == "ragged":
            result[case] = ragged(name)
            continue
        if kind == "ragged_pallas":  # the Pallas gmm (interpret mode) on each device's local experts
            from moe_jax.model.moe import pallas_grouped_matmul

            result[case] = ragged(name, pallas_grouped_matmul())
            continue
        mesh = build_mesh(mesh_config(**MESHES[name]))
        if kind == "step":
            result[case] = compare_steps(train_step_result(tiny()), train_step_result(tiny(), mesh))
            continue
        if kind not in reference:
            reference[kind] = loss_and_grads(tiny(dispatch=kind))
        loss0, dropped0, grads0, _ = reference[kind]
        loss, dropped, grads, hlo = loss_and_grads(tiny(dispatch=kind), mesh)
        result[case] = dict(loss=loss, loss_rel=abs(loss / loss0 - 1), grads_rel=rel(grads, grads0), dropped=dropped,
                            dropped_single=dropped0, all_to_all="all-to-all" in hlo)
    return result


if __name__ == "__main__":
    print(json.dumps({"equality": equality}[sys.argv[1]](sys.argv[2:])))
