"""Pure train/eval steps: (state, batch, lr) → (state, metrics), jitted; one compile per batch shape.

The model is split once into (graphdef, params, rest); steps re-merge it inside the trace. `state` is
a pytree {'params', 'opt_state', 'rng'}; batches are dict(inputs=[B, S] int32, targets=[B, S] int32,
weights=[B, S] float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def weighted_cross_entropy(logits, targets, weights):
    """(Σ w·nll, Σ w) over [B, S]; logits [B, S, V] float32."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)  # [B, S]
    return jnp.sum(nll * weights), jnp.sum(weights)


def load_imbalance(expert_load):
    """max_e load · E, averaged over layers: 1.0 = perfectly balanced, E = all tokens on one expert. [L, E] → scalar."""
    return jnp.mean(jnp.max(expert_load, axis=-1) * expert_load.shape[-1])


def _forward_loss(params, graphdef, rest, batch, train: bool):
    model = nnx.merge(graphdef, params, rest)
    logits, aux = model(batch["inputs"], train=train)  # [B, S, V]
    ce_sum, w_sum = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
    ce = ce_sum / jnp.maximum(w_sum, 1.0)
    return ce + aux["aux_loss"], (ce, aux)


def _under_mesh(fn, mesh):
    """`fn` called inside `jax.set_mesh(mesh)` (so the model sees the mesh when it is traced); `fn` if None."""
    if mesh is None:
        return fn

    def wrapped(*args):
        with jax.set_mesh(mesh):
            return fn(*args)

    wrapped.lower = lambda *args: _lower_under_mesh(fn, mesh, *args)
    return wrapped


def _lower_under_mesh(fn, mesh, *args):
    with jax.set_mesh(mesh):
        return fn.lower(*args)


def _init_fn(build_model, model_cfg, seed: int, optimizer: optax.GradientTransformation):
    """A function () -> (state, rest) that builds the model and its optimizer state (to jit or eval_shape)."""

    def init():
        _, params, rest = nnx.split(build_model(model_cfg, nnx.Rngs(seed)), nnx.Param, ...)
        state = {"params": params, "opt_state": optimizer.init(params), "rng": jax.random.key_data(jax.random.key(seed))}
        return state, rest

    return init


def train_state_shardings(init, mesh):
    """(state shardings by the rules, replicated shardings for `rest`) of an `_init_fn` on `mesh`; no allocation."""
    from jax.sharding import NamedSharding, PartitionSpec

    from moe_jax.parallel.rules import state_shardings

    abstract_state, abstract_rest = jax.eval_shape(init)
    replicated = NamedSharding(mesh, PartitionSpec())
    return state_shardings(abstract_state, mesh), jax.tree.map(lambda _: replicated, abstract_rest)


def init_train_state(build_model, model_cfg, seed: int, optimizer: optax.GradientTransformation, mesh=None):
    """(graphdef, rest, state) with state = {'params', 'opt_state', 'rng'}, initialised in ONE jitted call.

    Building the NNX model eagerly dispatches (and compiles) every initialiser separately; tracing the
    whole initialisation once is several times faster. `rest` holds non-parameter model state. With a
    `mesh`, every array is created already sharded by `moe_jax.parallel.rules` (nothing is gathered).
    """
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(seed))), nnx.Param, ...)
    init = _init_fn(build_model, model_cfg, seed, optimizer)
    shardings = None if mesh is None else train_state_shardings(init, mesh)
    state, rest = jax.jit(init, out_shardings=shardings)()
    return graphdef, rest, state


def all_finite(*trees):
    """One bool: every element of every array in `trees` is finite."""
    leaves = [x for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def make_train_step(graphdef, rest, optimizer: optax.GradientTransformation, *, mesh=None, state_sharding=None,
                    donate: bool = False):
    """A jitted train_step(state, batch, lr) → (new_state, metrics dict of scalars).

    metrics["finite"] is True when the loss, the gradients and the updated parameters are all finite.
    With a `mesh` the step runs under it (expert-parallel MoE, sharding constraints) and keeps the state in
    `state_sharding`; `donate` lets XLA reuse the old state's buffers (the caller must drop its reference).
    """

    def train_step(state, batch, lr):
        grad_fn = jax.value_and_grad(_forward_loss, has_aux=True)
        (loss, (ce, aux)), grads = grad_fn(state["params"], graphdef, rest, batch, True)
        opt_state = state["opt_state"]
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        updates, opt_state = optimizer.update(grads, opt_state, state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss, "ce": ce, "aux_loss": aux["aux_loss"],
            "load_balance_loss": aux["load_balance_loss"], "z_loss": aux["z_loss"],
            "dropped_fraction": aux["dropped_fraction"], "load_imbalance": load_imbalance(aux["expert_load"]),
            "router_entropy": aux["router_entropy"], "grad_norm": optax.tree.norm(grads), "lr": lr,
            "finite": all_finite(loss, grads, params),
        }
        return {"params": params, "opt_state": opt_state, "rng": state["rng"]}, metrics

    shardings = {}
    if state_sharding is not None:
        shardings = dict(in_shardings=(state_sharding, _batch_sharding(mesh), None), out_shardings=(state_sharding, None))
    return _under_mesh(jax.jit(train_step, donate_argnums=(0,) if donate else (), **shardings), mesh)


def _batch_sharding(mesh):
    from moe_jax.parallel.rules import batch_sharding

    return batch_sharding(mesh)


def make_eval_step(graphdef, rest, *, mesh=None):
    """A jitted eval_step(params, batch) → dict(ce_sum, weight_sum, dropped_fraction) at the eval capacity factor."""

    @jax.jit
    def eval_step(params, batch):
        model = nnx.merge(graphdef, params, rest)
        logits, aux = model(batch["inputs"], train=False)
        ce_sum, w_sum = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
        return {"ce_sum": ce_sum, "weight_sum": w_sum, "dropped_fraction": aux["dropped_fraction"]}

    return _under_mesh(eval_step, mesh)


def evaluate(eval_step, params, batches) -> dict:
    """Token-weighted held-out loss over `batches` (list of batch dicts) and the mean dropped fraction."""
    ce, w, dropped = 0.0, 0.0, 0.0
    for batch in batches:
        out = jax.device_get(eval_step(params, batch))
        ce += float(out["ce_sum"])
        w += float(out["weight_sum"])
        dropped += float(out["dropped_fraction"])
    return {"eval_loss": ce / max(w, 1.0), "eval_tokens": w, "eval_dropped_fraction": dropped / max(len(batches), 1)}
