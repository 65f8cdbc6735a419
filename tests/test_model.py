"""The NNX transformer: counts from the built tree, aux losses, dispatch equality, causality, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from moe_jax.errors import ConfigError
from moe_jax.model import build_model, count_params, model_config, model_shape, paper_shape, validate_model_config
from moe_jax.model.moe import expert_capacity
from moe_jax.model.router import router_stats
from moe_jax.scaling import constants

jax.config.update("jax_default_matmul_precision", "highest")


def tiny(**overrides):
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, head_dim=16, ffn_hidden=96, experts=4)
    return model_config(**{**base, **overrides})


def forward(model, x, train=True):
    """One compiled forward (far cheaper than eager op-by-op execution on a busy CPU)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=train))(state, x)


def tokens(b=2, s=16, vocab=64, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, s), 0, vocab, jnp.int32)


@pytest.mark.parametrize("overrides", [
    {}, {"experts": 1}, {"top_k": 2}, {"norm": "rmsnorm", "final_norm": True},
    {"n_heads": 3, "head_dim": 8, "ffn_hidden": 40, "experts": 3},
])
def test_counts_from_tree_equal_closed_form(overrides):
    cfg = tiny(**overrides)
    assert count_params(cfg) == model_shape(cfg).counts()


@pytest.mark.parametrize("shape, experts, field, expected, unit", [
    ("d512", 1, "n_act", 78.7, 1e6),  # SPEC §5
    ("d1280_L16", 1, "n_act", 469.4, 1e6),  # head dim 128
    ("d1024", 32, "n_total", 5.00, 1e9),  # SPEC §5: d1024 with E = 32
])
def test_paper_counts_match_spec(shape, experts, field, expected, unit):
    d, layers, heads = constants.PAPER_SHAPES[shape]
    counts = count_params(paper_shape(d, experts, n_layers=layers, n_heads=heads))
    decimals = 1 if unit == 1e6 else 2
    # SPEC's N counts no norm parameters (2·2d per layer: < 0.02 % of N); ours does.
    assert round((counts[field] - counts["n_norm"]) / unit, decimals) == expected
    assert abs(counts[field] / (expected * unit) - 1) < 1e-3
    assert counts["n_router"] == (d * experts * layers if experts > 1 else 0)


def test_forward_shapes_and_aux():
    cfg = tiny()
    model = build_model(cfg, nnx.Rngs(0))
    hash(nnx.split(model)[0])  # static attributes must hash, or nnx.jit cannot cache the graphdef
    logits, aux = forward(model, tokens(), train=True)
    assert logits.shape == (2, 16, 64) and logits.dtype == jnp.float32
    assert aux["expert_load"].shape == (2, 4)
    np.testing.assert_allclose(aux["expert_load"].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(aux["aux_loss"], 0.01 * aux["load_balance_loss"] + 0.001 * aux["z_loss"], rtol=1e-6)
    assert 0 < float(aux["router_entropy"]) <= np.log(4) + 1e-6


def test_dense_model_has_no_router_and_zero_aux():
    cfg = tiny(experts=1)
    model = build_model(cfg, nnx.Rngs(0))
    assert not any("router" in str(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    _, aux = forward(model, tokens())
    for key in ("aux_loss", "load_balance_loss", "z_loss", "dropped_fraction", "router_entropy"):
        assert float(aux[key]) == 0.0
    np.testing.assert_array_equal(aux["expert_load"], np.ones((2, 1)))


def test_dropped_fraction_follows_capacity_of_train_and_eval():
    cfg = tiny(capacity_factor_train=0.5, capacity_factor_eval=1.5)
    model = build_model(cfg, nnx.Rngs(1))
    x = tokens(b=4, s=16)
    t = x.size
    for train, cf in ((True, 0.5), (False, 1.5)):
        _, aux = forward(model, x, train=train)
        c = expert_capacity(t, 4, 1, cf)
        counts = np.rint(np.asarray(aux["expert_load"]) * t)  # [L, E] before dropping
        expected = np.mean(np.maximum(counts - c, 0).sum(axis=1) / t)
        np.testing.assert_allclose(float(aux["dropped_fraction"]), expected, atol=1e-6)
    assert expert_capacity(65536, 8, 1, 1.0) == 8192 and expert_capacity(100, 8, 2, 1.5) == 37


def test_all_dispatches_give_the_same_model_when_nothing_drops():
    x = tokens(b=1, s=12)
    outs = {}
    for name in ("capacity", "onehot", "dropless", "loop"):
        cfg = tiny(dispatch=name, capacity_factor_train=4.0, top_k=2)  # C = T: nothing drops
        model = build_model(cfg, nnx.Rngs(3))
        logits, aux = model(x) if name == "loop" else forward(model, x)  # the loop reference is eager-only
        assert float(aux["dropped_fraction"]) == 0.0
        outs[name] = logits
    for name in ("onehot", "dropless", "loop"):
        np.testing.assert_allclose(outs[name], outs["capacity"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="eager test reference"):
        forward(model, x)  # the last model built uses 'loop'



def test_causal_even_with_dropping():
    cfg = tiny(capacity_factor_train=0.5)
    model = build_model(cfg, nnx.Rngs(2))
    x = tokens(b=1, s=16)
    y = x.at[0, 10].set((x[0, 10] + 1) % 64)
    (a, _), (b, _) = forward(model, x), forward(model, y)
    np.testing.assert_allclose(a[:, :10], b[:, :10], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[:, 10:], b[:, 10:])


def test_router_stats_match_the_paper_formulas():
    e = 4
    logits = jnp.zeros((6, e))  # uniform router
    idx = jnp.array([[0], [0], [0], [1], [2], [2]])
    s = router_stats(logits, jax.nn.softmax(logits), idx, jnp.ones((6, 1), bool))
    np.testing.assert_allclose(s["load_balance_loss"], 1.0, rtol=1e-6)  # E · Σ (1/E) f_e = 1
    np.testing.assert_allclose(s["z_loss"], np.log(e) ** 2, rtol=1e-6)
    np.testing.assert_allclose(s["router_entropy"], np.log(e), rtol=1e-6)
    np.testing.assert_allclose(s["expert_load"], [0.5, 1 / 6, 1 / 3, 0.0], rtol=1e-6)
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(6, e)), jnp.float32)
    probs = np.asarray(jax.nn.softmax(logits))
    s = router_stats(logits, jnp.asarray(probs), idx, jnp.array([[1], [1], [0], [1], [1], [1]], bool))
    np.testing.assert_allclose(s["load_balance_loss"], e * np.sum(probs.mean(0) * [0.5, 1 / 6, 1 / 3, 0]), rtol=1e-5)
    lse = np.log(np.exp(np.asarray(logits)).sum(1))
    np.testing.assert_allclose(s["z_loss"], np.mean(lse**2), rtol=1e-5)
    np.testing.assert_allclose(s["dropped_fraction"], 1 / 6, rtol=1e-6)


def test_load_balance_loss_at_top2_divides_counts_by_tokens():
    """SPEC §5 at K = 2: 0.01·E·Σ_e mean_t(p_e)·(count_e / T), counts of both choices before dropping.
    Dividing by T·K instead (the shares in expert_load) would halve it."""
    t, e = 10, 4
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(t, e)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # [T, E]
    top2 = np.argsort(-probs, axis=1)[:, :2]  # [T, 2]
    counts = np.array([(top2 == i).sum() for i in range(e)])  # [E]
    expected = e * np.sum(probs.mean(0) * counts / t)
    kept = np.ones((t, 2), bool)
    kept[:3, 1] = False  # dropping does not change the counts
    s = router_stats(jnp.asarray(logits), jnp.asarray(probs), jnp.asarray(top2), jnp.asarray(kept))
    np.testing.assert_allclose(s["load_balance_loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(s["expert_load"], counts / (2 * t), rtol=1e-6)
    uniform = jnp.zeros((t, e))
    s = router_stats(uniform, jax.nn.softmax(uniform), jnp.asarray(top2), jnp.asarray(kept))
    np.testing.assert_allclose(s["load_balance_loss"], 2.0, rtol=1e-6)  # K for a uniform router
    # The model sums it over its 2 layers; a freshly initialised router is near uniform: ≈ K · L = 4 (T·K: ≈ 2).
    model = build_model(tiny(top_k=2, capacity_factor_train=4.0), nnx.Rngs(5))
    _, aux = forward(model, tokens(b=1, s=12))
    np.testing.assert_allclose(aux["load_balance_loss"], 4.0, rtol=0.1)


def _std(model, name):
    leaves = {"/".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return leaves, np.std(np.asarray(leaves[name]))


@pytest.mark.parametrize("down_fan_in", ["experts", "ffn"])
def test_init_is_truncated_normal_with_paper_fan_in(down_fan_in):
    cfg = tiny(vocab_size=4096, experts=8, ffn_hidden=128, expert_down_fan_in=down_fan_in)
    leaves, emb_std = _std(build_model(cfg, nnx.Rngs(0)), "embed")
    assert float(jnp.max(jnp.abs(leaves["embed"]))) <= 0.2
    s = np.sqrt(0.1)  # embedding fan_in = 1: N(0, 0.316) cut at ±0.2 (SPEC §5: std ≈ 0.11)
    np.testing.assert_allclose(emb_std, stats.truncnorm(-0.2 / s, 0.2 / s, scale=s).std(), rtol=0.02)
    fan_in = 8 * 128 if down_fan_in == "experts" else 128
    np.testing.assert_allclose(np.std(leaves["blocks/ffn/w_down"]), np.sqrt(0.1 / fan_in), rtol=0.03)
    np.testing.assert_allclose(np.std(leaves["blocks/attn/wq"]), np.sqrt(0.1 / 32), rtol=0.03)


def test_bfloat16_compute_keeps_f32_logits():
    logits, aux = forward(build_model(tiny(compute_dtype="bfloat16"), nnx.Rngs(0)), tokens())
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert aux["aux_loss"].dtype == jnp.float32


def test_loss_decreases_with_sgd():
    cfg = tiny()
    model = build_model(cfg, nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    x = jnp.tile(jnp.arange(17, dtype=jnp.int32)[None] % 7, (4, 1))  # a learnable periodic sequence

    def loss_fn(params):
        logits, aux = nnx.merge(graphdef, params)(x[:, :-1])
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], axis=-1))
        return ce + aux["aux_loss"]

    @jax.jit
    def step(params):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        return loss, jax.tree.map(lambda p, g: p - 0.2 * g, params, grads)

    losses = []
    for _ in range(10):
        loss, params = step(params)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("field, value, match", [
    ("dispatch", "fast", "model.dispatch"), ("top_k", 5, "top_k"), ("head_dim", 15, "even"),
    ("d_model", 0, "model.d_model"), ("capacity_factor_eval", 0.0, "capacity_factor_eval"),
    ("norm", "batchnorm", "model.norm"),
])
def test_validation_names_the_field(field, value, match):
    cfg = tiny()
    cfg[field] = value
    with pytest.raises(ConfigError, match=match):
        validate_model_config(cfg)
    with pytest.raises(ConfigError, match="unknown model field"):
        model_config(d_modle=3)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_nnx_norms_match_the_hand_formula_and_keep_names_and_axes(kind, compute_dtype):
    """model.norms builds nnx.LayerNorm / nnx.RMSNorm: (x − mean)·rsqrt(var + 1e-5)·scale + bias in f32
    (RMSNorm: no mean, no bias), returned in the input's dtype; params scale/bias [D] with logical axes."""
    from moe_jax.model.norms import Norm

    d = 48
    norm = Norm(tiny(d_model=d, norm=kind, compute_dtype=compute_dtype))
    assert isinstance(norm, nnx.LayerNorm if kind == "layernorm" else nnx.RMSNorm)
    rng = np.random.default_rng(0)
    scale, bias = rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32)
    norm.scale[...] = jnp.asarray(scale)
    if kind == "layernorm":
        norm.bias[...] = jnp.asarray(bias)
    x = jnp.asarray(rng.normal(size=(3, 5, d)) * 3 + 1, compute_dtype)
    h = np.asarray(x, np.float32)
    if kind == "layernorm":
        h = h - h.mean(-1, keepdims=True)
    want = h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-5) * scale + (bias if kind == "layernorm" else 0)
    got = norm(x)
    assert got.dtype == x.dtype
    tol = 1e-5 if compute_dtype == "float32" else 1e-2  # bf16: the result is rounded to 8 bits of mantissa
    np.testing.assert_allclose(np.asarray(got, np.float32), want.astype(x.dtype).astype(np.float32), rtol=tol, atol=tol)
    params = dict(nnx.to_flat_state(nnx.state(norm, nnx.Param)))
    names = {"scale", "bias"} if kind == "layernorm" else {"scale"}
    assert {p[-1] for p in params} == names
    for variable in params.values():
        assert variable.get_metadata()["logical_axes"] == ("norm",) and variable[...].shape == (d,)


@pytest.mark.parametrize("remat", ["none", "full", "save_dots"])
def test_scanned_layers_equal_the_layer_loop_on_the_same_params(remat):
    """Blocks are stacked [L, ...]; nnx.scan (with each remat policy) and a Python loop over layer slices agree."""
    x = tokens(b=2, s=12)
    looped = build_model(tiny(scan_layers=False, capacity_factor_train=0.5), nnx.Rngs(4))
    scanned = build_model(tiny(scan_layers=True, remat=remat, capacity_factor_train=0.5), nnx.Rngs(4))
    params = nnx.state(looped, nnx.Param)
    assert params["blocks"]["attn"]["wq"].shape == (2, 32, 2, 16)
    assert params["blocks"]["ffn"]["w_up"].get_metadata()["logical_axes"] == ("layers", "exp", "embed", "mlp")

    def loss_and_grads(model):
        graphdef, state = nnx.split(model)

        def loss(state):
            logits, aux = nnx.merge(graphdef, state)(x)
            return jnp.mean(logits**2) + aux["aux_loss"], (logits, aux)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(state)

    (l1, (logits1, aux1)), g1 = loss_and_grads(looped)
    (l2, (logits2, aux2)), g2 = loss_and_grads(scanned)
    np.testing.assert_allclose(logits2, logits1, rtol=1e-5, atol=1e-6)
    for key in ("aux_loss", "dropped_fraction", "expert_load"):
        np.testing.assert_allclose(aux2[key], aux1[key], rtol=1e-5, atol=1e-7)
    assert float(aux1["dropped_fraction"]) > 0
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
