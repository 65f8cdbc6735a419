"""Pure train/eval steps: (state, batch, lr) → (state, metrics), jitted; one compile per batch shape.

The model is split once into (graphdef, params, rest); steps re-merge it inside the trace. `state` is
a pytree {'params', 'opt_state', 'rng'}; batches are dict(inputs=[B, S] int32, targets=[B, S] int32,
weights=[B, S] float32).
"""

from __future__ import annotations

import functools

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


def init_train_state(build_model, model_cfg, seed: int, optimizer: optax.GradientTransformation, sharding=None):
    """(graphdef, rest, state) with state = {'params', 'opt_state', 'rng'}, initialised in ONE jitted call.

    Building the NNX model eagerly dispatches (and compiles) every initialiser separately; tracing the
    whole initialisation once is several times faster. `rest` holds non-parameter model state.
    """
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(seed))), nnx.Param, ...)

    @functools.partial(jax.jit, out_shardings=sharding)
    def init():
        _, params, rest = nnx.split(build_model(model_cfg, nnx.Rngs(seed)), nnx.Param, ...)
        state = {"params": params, "opt_state": optimizer.init(params), "rng": jax.random.key_data(jax.random.key(seed))}
        return state, rest

    state, rest = init()
    return graphdef, rest, state


def make_train_step(graphdef, rest, optimizer: optax.GradientTransformation):
    """A jitted train_step(state, batch, lr) → (new_state, metrics dict of scalars)."""

    @jax.jit
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
        }
        return {"params": params, "opt_state": opt_state, "rng": state["rng"]}, metrics

    return train_step


def make_eval_step(graphdef, rest):
    """A jitted eval_step(params, batch) → dict(ce_sum, weight_sum, dropped_fraction) at the eval capacity factor."""

    @jax.jit
    def eval_step(params, batch):
        model = nnx.merge(graphdef, params, rest)
        logits, aux = model(batch["inputs"], train=False)
        ce_sum, w_sum = weighted_cross_entropy(logits, batch["targets"], batch["weights"])
        return {"ce_sum": ce_sum, "weight_sum": w_sum, "dropped_fraction": aux["dropped_fraction"]}

    return eval_step


def evaluate(eval_step, params, batches) -> dict:
    """Token-weighted held-out loss over `batches` (list of batch dicts) and the mean dropped fraction."""
    ce, w, dropped = 0.0, 0.0, 0.0
    for batch in batches:
        out = jax.device_get(eval_step(params, batch))
        ce += float(out["ce_sum"])
        w += float(out["weight_sum"])
        dropped += float(out["dropped_fraction"])
    return {"eval_loss": ce / max(w, 1.0), "eval_tokens": w, "eval_dropped_fraction": dropped / max(len(batches), 1)}
