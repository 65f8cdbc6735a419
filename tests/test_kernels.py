"""Every dispatch agrees with the plain loop reference, forward and gradients (f32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.errors import ConfigError
from moe_jax.kernels import DISPATCH_NAMES, get_dispatch
from moe_jax.kernels.common import positions_in_expert
from moe_jax.kernels.reference import loop_moe

jax.config.update("jax_default_matmul_precision", "highest")
T, D, F = 24, 8, 12


def make_inputs(expert_idx, e, seed=0):
    """Random x, gates, weights for a fixed routing expert_idx [T, K]."""
    t, k = expert_idx.shape
    keys = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(keys[0], (t, D))
    gates = jax.random.uniform(keys[1], (t, k), minval=0.1, maxval=1.0)
    w_gate = jax.random.normal(keys[2], (e, D, F)) / np.sqrt(D)
    w_up = jax.random.normal(keys[3], (e, D, F)) / np.sqrt(D)
    w_down = jax.random.normal(keys[4], (e, F, D)) / np.sqrt(F)
    return x, jnp.asarray(expert_idx, jnp.int32), gates, w_gate, w_up, w_down


def uneven_routing(k=1, e=4):
    """Uneven group sizes with one expert (index 2) receiving nothing."""
    rng = np.random.default_rng(1)
    if k == 1:
        return rng.choice([0, 1, 3], size=(T, 1), p=[0.6, 0.3, 0.1])
    choices = np.stack([rng.choice([0, 1, 3], size=2, replace=False) for _ in range(T)])
    return choices


def value_and_grads(fn, inputs, capacity):
    """Output, kept mask and gradients w.r.t. x, gates and the weights of a scalar readout."""
    x, idx, gates, wg, wu, wd = inputs
    probe = jax.random.normal(jax.random.key(7), (x.shape[0], D))

    def loss(x, gates, wg, wu, wd):
        y, _ = fn(x, idx, gates, wg, wu, wd, capacity)
        return jnp.sum(y * probe)

    y, kept = fn(x, idx, gates, wg, wu, wd, capacity)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(x, gates, wg, wu, wd)
    return y, kept, grads


def assert_same(a, b, tol=1e-5):
    ya, ka, ga = a
    yb, kb, gb = b
    np.testing.assert_array_equal(np.asarray(ka), np.asarray(kb))
    np.testing.assert_allclose(ya, yb, rtol=tol, atol=tol)
    for g1, g2 in zip(ga, gb):
        np.testing.assert_allclose(g1, g2, rtol=tol, atol=tol)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", ["capacity", "dropless", "onehot"])
def test_no_drop_matches_loop(name, k):
    inputs = make_inputs(uneven_routing(k), e=4)
    ref = value_and_grads(loop_moe, inputs, None)
    assert np.asarray(ref[1]).all()
    # capacity = T: nothing can drop, for the dropping paths too
    capacity = None if name == "dropless" else T
    assert_same(value_and_grads(jax.jit(get_dispatch(name), static_argnums=6), inputs, capacity), ref)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", ["capacity", "onehot"])
def test_dropping_matches_loop(name, k):
    inputs = make_inputs(uneven_routing(k), e=4)
    capacity = 5  # expert 0 receives ~60 % of T=24 tokens: many overflow
    ref = value_and_grads(loop_moe, inputs, capacity)
    kept = np.asarray(ref[1])
    assert 0 < kept.sum() < kept.size
    assert_same(value_and_grads(jax.jit(get_dispatch(name), static_argnums=6), inputs, capacity), ref)


def test_dropped_tokens_are_the_latest_and_get_zero_output():
    idx = np.zeros((T, 1), int)  # everything to expert 0
    inputs = make_inputs(idx, e=2)
    y, kept = get_dispatch("capacity")(*inputs, 7)
    np.testing.assert_array_equal(np.asarray(kept[:, 0]), np.arange(T) < 7)
    np.testing.assert_array_equal(np.asarray(y[7:]), 0.0)
    assert np.all(np.abs(np.asarray(y[:7])).sum(axis=1) > 0)


def test_zero_capacity_drops_everything():
    inputs = make_inputs(uneven_routing(), e=4)
    for name in ("capacity", "onehot"):
        y, kept = get_dispatch(name)(*inputs, 0)
        assert not np.asarray(kept).any()
        np.testing.assert_array_equal(np.asarray(y), 0.0)


def test_single_expert_equals_dense_swiglu():
    inputs = make_inputs(np.zeros((T, 1), int), e=1)
    x, idx, _, wg, wu, wd = inputs
    ones = jnp.ones((T, 1))
    dense = (jax.nn.silu(x @ wg[0]) * (x @ wu[0])) @ wd[0]
    for name in ("capacity", "dropless", "onehot", "loop"):
        y, _ = get_dispatch(name)(x, idx, ones, wg, wu, wd, None)
        np.testing.assert_allclose(y, dense, rtol=1e-5, atol=1e-5)


def test_positions_are_ranks_in_token_major_order():
    idx = jnp.array([[0, 2], [2, 1], [0, 1], [2, 0]])
    flat, pos = positions_in_expert(idx, 3)
    np.testing.assert_array_equal(np.asarray(flat), [0, 2, 2, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(np.asarray(pos), [0, 0, 1, 0, 1, 1, 2, 2])


def test_unknown_dispatch_is_a_config_error():
    with pytest.raises(ConfigError, match="capacity, dropless, onehot, loop"):
        get_dispatch("fast")
    assert set(DISPATCH_NAMES) == {"capacity", "dropless", "onehot", "loop", "pallas", "megablox", "auto"}


@pytest.mark.slow
def test_capacity_matches_onehot_at_scale_with_drops():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2048, 32)) + np.linspace(0, 3, 32)  # skewed: late experts overflow
    idx = np.argsort(-logits, axis=1)[:, :2]
    inputs = make_inputs(idx, e=32, seed=4)
    capacity = int(1.0 * 2048 * 2 / 32)
    fast = value_and_grads(jax.jit(get_dispatch("capacity"), static_argnums=6), inputs, capacity)
    ref = value_and_grads(jax.jit(get_dispatch("onehot"), static_argnums=6), inputs, capacity)
    assert 0.05 < 1 - np.asarray(fast[1]).mean() < 0.95
    assert_same(fast, ref, tol=1e-4)
