"""Pallas kernels (interpret mode on CPU) against jax.lax.ragged_dot and the loop MoE; TPU lowering; bytes."""

import functools
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax import cli
from moe_jax.errors import ConfigError
from moe_jax.kernels import ragged_dot_triton, resolve_dispatch
from moe_jax.kernels.fused import expert_order, pallas_moe
from moe_jax.kernels.gather import gather_sum, gather_sum_plan
from moe_jax.kernels.gmm import gmm, gmm_plan, tgmm
from moe_jax.kernels.groups import work_items
from moe_jax.kernels.megablox import megablox_moe, megablox_moe_tpu
from moe_jax.kernels.reference import loop_moe
from moe_jax.kernels.tiling import Tiling, choose_tiling
from moe_jax.kernels.traffic import markdown_table
from moe_jax.model.config import model_config, validate_model_config
from moe_jax.model.moe import MoE
from moe_jax.model.init import ParamKeys

jax.config.update("jax_default_matmul_precision", "highest")
ROOT = Path(__file__).resolve().parent.parent
K, N, TM = 16, 24, 8  # contraction, output width, row tile (groups below are not multiples of 8)
GROUPINGS = {
    "irregular": [5, 0, 11, 1, 8],  # sizes 0, 1, non-multiples and a multiple of the tile; M = 25
    "one_group": [0, 0, 25, 0, 0],  # every row on one expert
}


def close(actual, expected, rtol=1e-5):
    """f32 agreement relative to the reference's scale."""
    expected = np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * scale)


def operands(m, groups, seed=0, k=K, n=N):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (m, k)), jax.random.normal(keys[1], (groups, k, n)),
            jax.random.normal(keys[2], (m, n)))


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_gmm_and_its_gradients_equal_ragged_dot(grouping):
    sizes = jnp.asarray(GROUPINGS[grouping], jnp.int32)
    lhs, rhs, probe = operands(25, 5)

    def loss(mm, lhs, rhs):
        return jnp.sum(mm(lhs, rhs) * probe)

    ours = functools.partial(gmm, group_sizes=sizes, tiles=(TM, 0, 0))
    ref = functools.partial(jax.lax.ragged_dot, group_sizes=sizes)
    close(jax.jit(ours)(lhs, rhs), ref(lhs, rhs))
    for got, want in zip(jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1)))(lhs, rhs),
                         jax.grad(functools.partial(loss, ref), argnums=(0, 1))(lhs, rhs)):
        close(got, want)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_tgmm_equals_the_ragged_dot_weight_gradient(grouping):
    sizes = jnp.asarray(GROUPINGS[grouping], jnp.int32)
    lhs, rhs, grad = operands(25, 5, seed=1)
    want = jax.vjp(lambda w: jax.lax.ragged_dot(lhs, w, sizes), rhs)[1](grad)[0]
    got = jax.jit(functools.partial(tgmm, tiles=(TM, 0, 0)))(lhs, grad, sizes)
    close(got, want)
    empty = np.asarray(sizes) == 0
    np.testing.assert_array_equal(np.asarray(got)[empty], 0.0)  # empty groups are written, as zeros


def test_rows_past_the_groups_are_zero_and_add_no_weight_gradient():
    sizes = jnp.asarray([3, 0, 9], jnp.int32)  # 12 of 25 rows belong to a group
    lhs, rhs, grad = operands(25, 3, seed=2)
    out = jax.jit(functools.partial(gmm, tiles=(TM, 0, 0)))(lhs, rhs, sizes)
    close(out, jax.lax.ragged_dot(lhs, rhs, sizes))
    np.testing.assert_array_equal(np.asarray(out)[12:], 0.0)
    want = jax.vjp(lambda w: jax.lax.ragged_dot(lhs, w, sizes), rhs)[1](grad)[0]
    close(jax.jit(functools.partial(tgmm, tiles=(TM, 0, 0)))(lhs, grad, sizes), want)


def test_k_and_n_tiles_accumulate():
    sizes = jnp.asarray([7, 0, 20, 13], jnp.int32)
    lhs, rhs, grad = operands(40, 4, seed=3, k=256, n=256)
    tiles = (TM, 128, 128)  # two contraction steps, two column tiles
    close(jax.jit(functools.partial(gmm, tiles=tiles))(lhs, rhs, sizes), jax.lax.ragged_dot(lhs, rhs, sizes))
    want = jax.vjp(lambda w: jax.lax.ragged_dot(lhs, w, sizes), rhs)[1](grad)[0]
    close(jax.jit(functools.partial(tgmm, tiles=tiles))(lhs, grad, sizes), want)


def test_rows_read_through_an_index_equal_the_permuted_product():
    """lhs rows read via rows (top-2 routing: each source row twice); gradients gathered back."""
    idx = jnp.asarray(np.random.default_rng(0).choice(4, size=(13, 2), replace=True), jnp.int32)
    idx = idx.at[:, 1].set((idx[:, 0] + 1 + idx[:, 1] % 3) % 4)  # two distinct experts per row
    rows, _, inverse, sizes = expert_order(idx, 4)
    src, rhs, probe = operands(13, 4, seed=4)
    probe = jnp.resize(probe, (26, N))

    def ours(src, rhs):
        return gmm(src, rhs, sizes, rows, inverse, (TM, 0, 0))

    def ref(src, rhs):
        return jax.lax.ragged_dot(jnp.take(src, rows, axis=0), rhs, sizes)

    close(jax.jit(ours)(src, rhs), ref(src, rhs))
    grads = [jax.grad(lambda s, w, f=f: jnp.sum(f(s, w) * probe), argnums=(0, 1))(src, rhs)
             for f in (jax.jit(ours), ref)]
    for got, want in zip(*grads):
        close(got, want)


def test_gather_sum_weights_each_picked_row():
    src = jax.random.normal(jax.random.key(5), (30, 16))
    index = jnp.asarray(np.random.default_rng(1).integers(0, 30, size=(11, 3)), jnp.int32)  # T = 11: 1 tile + 3
    weight = jax.random.uniform(jax.random.key(6), (11, 3))
    want = np.einsum("tk,tkd->td", np.asarray(weight), np.asarray(src)[np.asarray(index)])
    close(jax.jit(functools.partial(gather_sum, tile_m=TM))(src, index, weight), want)
    other = jax.random.normal(jax.random.key(7), (11, 16))
    out, dots = jax.jit(functools.partial(gather_sum, tile_m=TM))(src, index, weight, other=other)
    close(out, want)
    close(dots, np.einsum("td,tkd->tk", np.asarray(other), np.asarray(src)[np.asarray(index)]))


def all_shapes(jaxpr) -> set:
    """Shapes of every value computed in a jaxpr, its sub-jaxprs included."""
    shapes = set()
    for eqn in jaxpr.eqns:
        shapes |= {tuple(v.aval.shape) for v in eqn.outvars}
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes |= all_shapes(inner)
    return shapes


def test_fused_backward_builds_no_token_order_copy_of_the_expert_outputs():
    """d gates are dotted inside the d ys gather: no [T, K, D] copy of the expert outputs exists."""
    t, k, d = 13, 3, 16
    idx = np.stack([np.random.default_rng(3).permutation(5)[:k] for _ in range(t)])
    x, idx, gates, wg, wu, wd = moe_inputs(idx, 5, d=d, f=24)
    loss = lambda *a: jnp.sum(pallas_moe(*a, tiles=(TM, 0, 0))[0])  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 2, 3, 4, 5)))(x, idx, gates, wg, wu, wd)
    shapes = all_shapes(jaxpr.jaxpr)
    assert (t * k, d) in shapes and (t, k) in shapes  # the expert-order rows and the gates' gradient
    assert (t, k, d) not in shapes


def test_bf16_inputs_accumulate_in_f32_and_come_out_bf16():
    sizes = jnp.asarray([100, 0, 28], jnp.int32)
    lhs, rhs, _ = operands(128, 3, seed=7, k=512, n=128)
    lhs, rhs = lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16)
    out = jax.jit(functools.partial(gmm, tiles=(32, 128, 0)))(lhs, rhs, sizes)  # 4 contraction steps
    assert out.dtype == jnp.bfloat16
    f32 = np.asarray(jax.lax.ragged_dot(lhs, rhs, sizes, preferred_element_type=jnp.float32))
    err = np.abs(np.asarray(out, np.float32) - f32)
    assert np.all(err <= 2.0**-8 * np.abs(f32) + 1e-6)  # within the final bf16 rounding of an f32 sum
    # Accumulating the four 128-wide partial products in bf16 instead loses more than that somewhere.
    partial = [jax.lax.ragged_dot(lhs[:, i:i + 128], rhs[:, i:i + 128], sizes) for i in range(0, 512, 128)]
    bf16_sum = functools.reduce(lambda a, b: (a + b).astype(jnp.bfloat16), partial)
    assert np.abs(np.asarray(bf16_sum, np.float32) - f32).max() > err.max()


def test_bf16_tgmm_accumulates_rows_in_f32():
    """Group 0 spans 13 row tiles of 8: its weight gradient is accumulated over 13 grid steps."""
    sizes = jnp.asarray([100, 0, 28], jnp.int32)
    lhs, _, grad = operands(128, 3, seed=8, k=128, n=128)
    lhs, grad = lhs.astype(jnp.bfloat16), grad.astype(jnp.bfloat16)
    want = np.asarray(jax.vjp(lambda w: jax.lax.ragged_dot(lhs.astype(jnp.float32), w, sizes),
                              jnp.zeros((3, 128, 128)))[1](grad.astype(jnp.float32))[0])
    run = jax.jit(functools.partial(tgmm, tiles=(8, 0, 0)), static_argnames="out_dtype")
    close(run(lhs, grad, sizes, out_dtype=jnp.float32), want)  # bf16 products are exact in f32: f32 sums
    out = run(lhs, grad, sizes)
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out, np.float32) - want)
    assert np.all(err <= 2.0**-8 * np.abs(want) + 1e-6)  # only the final rounding to bf16
    # Accumulating the 13 row-tile partial products of group 0 in bf16 instead loses more than that.
    a, g = np.asarray(lhs, np.float32), np.asarray(grad, np.float32)
    partial = [jnp.asarray(a[r:min(r + 8, 100)].T @ g[r:min(r + 8, 100)]) for r in range(0, 100, 8)]
    bf16_sum = functools.reduce(lambda s, p: (s + p).astype(jnp.bfloat16), partial, jnp.zeros((128, 128), jnp.bfloat16))
    assert np.abs(np.asarray(bf16_sum, np.float32) - want[0]).max() > err[0].max()


def moe_inputs(idx, e, d=8, f=12, seed=0):
    t, k = idx.shape
    keys = jax.random.split(jax.random.key(seed), 5)
    return (jax.random.normal(keys[0], (t, d)), jnp.asarray(idx, jnp.int32),
            jax.random.uniform(keys[1], (t, k), minval=0.1, maxval=1.0),
            jax.random.normal(keys[2], (e, d, f)) / np.sqrt(d), jax.random.normal(keys[3], (e, d, f)) / np.sqrt(d),
            jax.random.normal(keys[4], (e, f, d)) / np.sqrt(f))


def routing(name: str):
    """expert_idx [21, K] and E of a routing; 21 rows = 2 row tiles of 8 + 5, so groups straddle tiles."""
    rng = np.random.default_rng(2)
    if name == "one_expert":  # all rows on expert 2; experts 0, 1, 3 empty
        return np.full((21, 1), 2), 4
    if name == "sizes_0_1_irregular":  # top-1, group sizes [5, 0, 11, 1, 4] in shuffled token order
        return rng.permutation(np.repeat(np.arange(5), [5, 0, 11, 1, 4]))[:, None], 5
    idx = np.stack([rng.choice(3, size=2, replace=False, p=[0.6, 0.3, 0.1]) for _ in range(21)])
    idx[7, 1] = 3  # top-2 with expert 3 chosen exactly once
    return idx, 4


@pytest.mark.parametrize(("name", "sizes_include"), [("one_expert", {0, 21}), ("sizes_0_1_irregular", {0, 1, 5, 11}),
                                                     ("top2_singleton", {1})], ids=["one_expert", "sizes_0_1_irregular",
                                                                                    "top2_singleton"])
def test_pallas_dispatch_equals_the_loop_forward_and_gradients(name, sizes_include):
    idx, experts = routing(name)
    assert sizes_include <= set(np.bincount(idx.ravel(), minlength=experts).tolist())
    x, idx, gates, wg, wu, wd = moe_inputs(idx, experts)
    probe = jax.random.normal(jax.random.key(9), x.shape)

    def loss(fn, x, gates, wg, wu, wd):
        y, kept = fn(x, idx, gates, wg, wu, wd, None)
        return jnp.sum(y * probe), (y, kept)

    args, argnums = (x, gates, wg, wu, wd), (0, 1, 2, 3, 4)
    ours = functools.partial(pallas_moe, tiles=(TM, 0, 0))
    (_, (y, kept)), got = jax.jit(jax.value_and_grad(functools.partial(loss, ours), argnums, has_aux=True))(*args)
    (_, (y_ref, kept_ref)), want = jax.value_and_grad(functools.partial(loss, loop_moe), argnums, has_aux=True)(*args)
    close(y, y_ref)
    assert np.asarray(kept).all() and np.asarray(kept_ref).all()
    for g, w in zip(got, want):
        close(g, w)


def test_bf16_pallas_dispatch_matches_the_f32_loop():
    """bf16 activations and weights through the fused path: within bf16 rounding of an f32 computation."""
    idx, experts = routing("sizes_0_1_irregular")
    x, idx, gates, wg, wu, wd = moe_inputs(idx, experts, d=128, f=256)
    bf16 = [v.astype(jnp.bfloat16) for v in (x, wg, wu, wd)]
    y, _ = jax.jit(functools.partial(pallas_moe, tiles=(TM, 0, 0)))(bf16[0], idx, gates, *bf16[1:])
    want, _ = loop_moe(bf16[0].astype(jnp.float32), idx, gates, *[w.astype(jnp.float32) for w in bf16[1:]], None)
    assert y.dtype == jnp.bfloat16
    close(y.astype(jnp.float32), want, rtol=1e-2)  # a, b, h, ys and y each rounded to bf16 once


def tiny_moe_config(dispatch, **overrides):
    return model_config(d_model=16, ffn_hidden=24, experts=4, top_k=2, dispatch=dispatch,
                        capacity_factor_train=4.0, **overrides)  # C = T·k: nothing drops in `loop`


def test_moe_layer_with_pallas_equals_the_loop_layer_forward_and_gradients():
    """The whole layer (router included): output, and gradients of all parameters and of the input."""
    x = jax.random.normal(jax.random.key(3), (2, 12, 16))  # [B, S, D]
    probe = jax.random.normal(jax.random.key(5), x.shape)

    def loss(layer, x):
        y, stats = layer(x)
        return jnp.sum(y * probe), (y, stats["dropped_fraction"])

    results = {}
    for name in ("pallas", "loop"):
        layer = MoE(tiny_moe_config(name, tile_m=8), ParamKeys(nnx.Rngs(4)))  # the same weights for both
        grad = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        (_, (y, dropped)), (d_params, d_x) = (nnx.jit(grad) if name == "pallas" else grad)(layer, x)
        assert float(dropped) == 0.0
        results[name] = (y, d_x, nnx.to_pure_dict(d_params))
    (y, d_x, d_params), (y_ref, d_x_ref, d_params_ref) = results["pallas"], results["loop"]
    close(y, y_ref)
    close(d_x, d_x_ref)
    assert jax.tree.structure(d_params) == jax.tree.structure(d_params_ref)
    assert {"w_gate", "w_up", "w_down", "router"} <= set(d_params)
    for got, want in zip(jax.tree.leaves(d_params), jax.tree.leaves(d_params_ref)):
        assert np.abs(np.asarray(want)).max() > 0  # every parameter gets a gradient
        close(got, want)


def test_auto_resolves_per_backend_at_build_and_in_model_info(capsys):
    assert [resolve_dispatch("auto", b) for b in ("tpu", "gpu", "cpu")] == ["pallas", "dropless", "capacity"]
    assert resolve_dispatch("auto") == "capacity" and resolve_dispatch("pallas") == "pallas"
    assert MoE(tiny_moe_config("auto"), ParamKeys(nnx.Rngs(0))).dispatch == "capacity"
    code = cli.main(["model-info", "--config", f"{ROOT}/configs/tiny.py", "--config.model.dispatch=auto"])
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert code == 0 and rows["dispatch"] == "capacity"


def test_model_info_prints_the_pallas_tiles(capsys):
    argv = ["model-info", "--config", "tiny", "--config.model.dispatch=pallas", "--config.model.tile_m=64", "--json"]
    assert cli.main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dispatch"] == "pallas" and info["ragged_dot_triton"] is False
    # tiny: D = 128, F = 384, 16 sequences of 128 tokens, top-1; tk, tn the whole dimensions (they fit)
    assert info["tiles"] == ("gate/up 64x128x384, down 64x384x128, tgmm gate/up 64x128x384, tgmm down 64x384x128 "
                             "(tm x tk x tn at T·K = 2048 rows)")


def test_megablox_off_tpu_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="TPU-only") as err:
        megablox_moe(*[np.zeros((8, 8), np.float32)] * 6)  # refused before any shape is looked at
    assert "\n" not in str(err.value) and "pallas" in str(err.value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("tile_m", 12, "multiple of 8"), ("tile_k", -128, "positive integer"), ("tile_n", 32, "divide the dimension 16"),
    ("tile_k", 48, "multiple of 128"),
])
def test_bad_tile_fields_are_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_model_config(tiny_moe_config("pallas", **{field: value}))


def test_tile_defaults_and_shape_errors():
    assert choose_tiling(65536, 1024, 3072) == Tiling(512, 1024, 3072)  # whole N fits: x read once
    assert choose_tiling(65536, 1024, 3072, weight_grad=True).tn < 3072  # tgmm keeps a [tk, tn] f32 accumulator
    assert choose_tiling(25, 16, 24) == Tiling(32, 16, 24)
    assert choose_tiling(25, 256, 256, (8, 128, 0)) == Tiling(8, 128, 256)
    with pytest.raises(ConfigError, match="tile_k = 384 must divide"):
        choose_tiling(64, 512, 128, (0, 384, 0))


def test_ragged_dot_triton_context_restores_the_flag():
    seen = []
    with ragged_dot_triton(True):
        seen.append(jax.config.jax_ragged_dot_use_gpu_pallas_triton_lowering)
    seen.append(jax.config.jax_ragged_dot_use_gpu_pallas_triton_lowering)
    assert seen == [True, False]


def test_tpu_kernels_lower_for_a_tpu_target_off_device():
    """Mosaic lowering runs on this CPU host (compilation by libtpu needs a TPU and is not run)."""
    t, d, f, e, k = 256, 256, 512, 4, 2
    shapes = [((t, d), jnp.bfloat16), ((t, k), jnp.int32), ((t, k), jnp.float32),
              ((e, d, f), jnp.bfloat16), ((e, d, f), jnp.bfloat16), ((e, f, d), jnp.bfloat16)]
    args = [jax.ShapeDtypeStruct(s, dt) for s, dt in shapes]

    def train_grads(fn):
        def loss(x, idx, gates, wg, wu, wd):
            return jnp.sum(fn(x, idx, gates, wg, wu, wd)[0].astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 2, 3, 4, 5))

    ours = functools.partial(pallas_moe, tiles=(128, 0, 0), interpret=False)
    kernels = {}
    for name, fn in (("pallas", ours), ("megablox", megablox_moe_tpu)):
        text = jax.jit(train_grads(fn)).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
        kernels[name] = len(re.findall(r"tpu_custom_call", text))
    assert kernels["pallas"] >= 4 and kernels["megablox"] >= 1  # forward alone has 4 Pallas kernels


def test_default_tiles_lower_for_tpu_at_paper_width():
    """Default tiles at D = 1024, F = 3072 (bf16) pass Mosaic's block-shape checks, gathered or not."""
    m, d, f, e = 4096, 1024, 3072, 8
    x, w = jax.ShapeDtypeStruct((m, d), jnp.bfloat16), jax.ShapeDtypeStruct((e, d, f), jnp.bfloat16)
    sizes, rows = jax.ShapeDtypeStruct((e,), jnp.int32), jax.ShapeDtypeStruct((m,), jnp.int32)
    inverse = jax.ShapeDtypeStruct((m, 1), jnp.int32)

    def step(x, w, sizes, rows, inverse):
        y = gmm(x, w, sizes, rows, inverse, interpret=False)
        return jax.grad(lambda x, w: jnp.sum(gmm(x, w, sizes, rows, inverse, interpret=False).astype(jnp.float32)),
                        argnums=(0, 1))(x, w), y

    text = jax.jit(step).trace(x, w, sizes, rows, inverse).lower(lowering_platforms=("tpu",)).as_text()
    assert len(re.findall(r"tpu_custom_call", text)) >= 4  # gmm, gmm^T, gather_sum, tgmm


def test_byte_counts_from_block_specs():
    tiling = Tiling(8, 16, 12)
    sizes = jnp.asarray([16, 16], jnp.int32)  # two groups on tile boundaries: no revisits
    meta = work_items(sizes, 32, 8, visit_empty=False)
    scalars = sum(np.asarray(s).nbytes for s in meta.scalars())
    counted = gmm_plan(32, 16, (2, 16, 24), 2, meta, tiling).hbm_bytes()
    lhs, rhs, out = 32 * 16 * 2, 2 * 16 * 24 * 2, 32 * 24 * 2
    assert counted == {"read": scalars + 2 * lhs + rhs, "written": out}  # lhs once per column tile
    rows = jnp.arange(32, dtype=jnp.int32)
    gathered = gmm_plan(32, 16, (2, 16, 24), 2, meta, tiling, rows).hbm_bytes()
    assert gathered == {"read": counted["read"] + rows.nbytes, "written": out}  # same traffic, plus the index
    index = np.zeros((32, 1), np.int32)  # d ys of 32 sorted rows (top-1), gathered from dy [T, 16]
    plain, dotted = (gather_sum_plan((32, 16), index, 2, 8, dots).hbm_bytes() for dots in (False, True))
    assert plain == {"read": index.nbytes + 32 * 4 + 32 * 16 * 2, "written": 32 * 16 * 2}  # index, gates, rows
    assert dotted == {"read": plain["read"] + 32 * 16 * 2, "written": plain["written"] + 32 * 4}  # + ys, d gates


def test_docs_table_is_the_code_output():
    doc = (ROOT / "docs" / "kernels.md").read_text()
    table = doc.split("<!-- bytes:begin -->")[1].split("<!-- bytes:end -->")[0].strip()
    assert table == markdown_table()
