"""Optimal configurations (SPEC §4): compute-optimal, memory-constrained, inference-aware, E× tokens."""

import math

import numpy as np
import pytest

from moe_jax.errors import UserError
from moe_jax.scaling import counting, optimal
from moe_jax.scaling.law import load_law

LAW = load_law("paper2025")

# SPEC §4: (F, E) -> (N*, D*, L*)
SPEC_COMPUTE_OPTIMAL = {
    (1e20, 1): (1.72e9, 9.69e9, 2.5891),
    (1e20, 4): (1.21e9, 1.38e10, 2.5541),
    (1e20, 32): (6.69e8, 2.49e10, 2.4732),
    (1e22, 1): (1.88e10, 8.86e10, 2.1571),
    (1e22, 4): (1.58e10, 1.05e11, 2.1262),
    (1e22, 32): (1.22e10, 1.37e11, 2.0699),
}

# SPEC §4: memory-optimal E for F × M (params at 2 bytes: 24 GB, 80 GB, 640 GB), no KV cache.
SPEC_MEMORY_OPTIMAL = {
    (1e21, 12e9): 32, (1e21, 40e9): 32, (1e21, 320e9): 32,
    (1e22, 12e9): 4, (1e22, 40e9): 16, (1e22, 320e9): 32,
    (1e24, 12e9): 1, (1e24, 40e9): 1, (1e24, 320e9): 8,
}


@pytest.mark.parametrize("flops, experts", sorted(SPEC_COMPUTE_OPTIMAL))
def test_compute_optimal_matches_spec_table(flops, experts):
    n_want, d_want, l_want = SPEC_COMPUTE_OPTIMAL[(flops, experts)]
    (r,) = optimal.compute_optimal(LAW, flops, [experts])
    # SPEC's N*, D* are printed to 3 significant digits: 0.5 % covers the rounding.
    assert r.n_act == pytest.approx(n_want, rel=5e-3)
    assert r.tokens == pytest.approx(d_want, rel=5e-3)
    assert r.loss == pytest.approx(l_want, abs=1e-3)
    assert 6 * r.n_act * r.tokens == pytest.approx(flops, rel=1e-12)


@pytest.mark.parametrize("coeffs, experts", [("paper2025", 1), ("paper2025", 8), ("paper2025", 32), ("hoffmann2022", 1)])
@pytest.mark.parametrize("flops", [1e19, 1e22, 1e25])
def test_closed_form_equals_numeric_minimisation(coeffs, experts, flops):
    law = load_law(coeffs)
    (closed,) = optimal.compute_optimal(law, flops, [experts])
    numeric = optimal.compute_optimal_numeric(law, flops, experts)
    assert numeric.n_act == pytest.approx(closed.n_act, rel=1e-5)
    assert numeric.tokens == pytest.approx(closed.tokens, rel=1e-5)
    assert numeric.loss == pytest.approx(closed.loss, rel=1e-10)
    # It is a minimum: moving N either way along the iso-FLOPs line costs loss.
    for f in (0.9, 1.1):
        n = closed.n_act * f
        assert float(law.loss(n, flops / (6 * n), experts)) > closed.loss


def test_more_experts_smaller_n_more_tokens():
    """SPEC §6 claim 1: at a fixed budget more experts → smaller compute-optimal N, more tokens."""
    rows = optimal.compute_optimal(LAW, 1e21)
    assert [r.experts for r in rows] == [1, 2, 4, 8, 16, 32]
    assert np.all(np.diff([r.n_act for r in rows]) < 0)
    assert np.all(np.diff([r.tokens for r in rows]) > 0)
    assert np.all(np.diff([r.loss for r in rows]) < 0)


@pytest.mark.parametrize("experts, total", [(1, False), (1, True), (8, True), (32, True)])
def test_d_model_for_params_inverts_counting(experts, total):
    d = np.array([64.0, 517.3, 2304.0, 9000.0])
    n = counting.paper_n_total(d, d / 64, experts) if total else counting.paper_n_act(d, d / 64)
    assert optimal.d_model_for_params(n, experts, total=total) == pytest.approx(d, rel=1e-10)


@pytest.mark.parametrize("flops, memory", sorted(SPEC_MEMORY_OPTIMAL))
def test_memory_optimal_matches_spec_cells(flops, memory):
    res = optimal.memory_optimal(LAW, flops, memory)
    assert res.best.experts == SPEC_MEMORY_OPTIMAL[(flops, memory)]
    others = [c for c in res.per_expert if c.experts != res.best.experts]
    assert res.runner_up is not None and res.runner_up.experts != res.best.experts
    assert res.runner_up.loss == min(c.loss for c in others)
    assert res.margin == pytest.approx(res.runner_up.loss - res.best.loss) and res.margin > 0
    for c in res.per_expert:
        assert c.n_total <= memory
        assert c.tokens == pytest.approx(flops / (6 * c.n_act), rel=1e-12)
        assert c.n_layers == pytest.approx(c.d_model / 64)


@pytest.mark.parametrize("flops, memory", [(1e22, 40e9), (1e24, 320e9), (1e21, 12e9)])
def test_memory_optimal_per_expert_is_clipped_compute_optimum(flops, memory):
    """Independent check of the sweep: the loss is convex in log N, so each E's best integer d is the
    compute-optimal d (±1) when that fits the memory, else the largest d that fits."""
    res = optimal.memory_optimal(LAW, flops, memory)
    for c in res.per_expert:
        (co,) = optimal.compute_optimal(LAW, flops, [c.experts])
        d_free = co.d_model
        d_mem = float(optimal.d_model_for_params(memory, c.experts, total=True))
        if d_free <= d_mem:
            assert abs(c.d_model - d_free) <= 1.0
        else:
            assert c.d_model == math.floor(d_mem)


def test_realistic_mode_integer_shapes_and_no_better_than_paper():
    paper = optimal.memory_optimal(LAW, 1e22, 40e9)
    real = optimal.memory_optimal(LAW, 1e22, 40e9, realistic=True)
    for c in real.per_expert:
        assert c.d_model % 64 == 0 and c.n_layers == c.d_model // 64 and isinstance(c.n_layers, int)
        assert c.n_total <= 40e9
    # The realistic grid is a subset of the paper's integer-d grid, and close to it.
    assert real.best.loss >= paper.best.loss
    assert real.best.loss - paper.best.loss < 2e-3


def test_kv_cache_counts_against_memory():
    kv_tokens = 2e5
    res = optimal.memory_optimal(LAW, 1e22, 40e9, kv_tokens=kv_tokens)
    free = optimal.memory_optimal(LAW, 1e22, 40e9)
    for c in res.per_expert:
        assert c.kv_params == pytest.approx(kv_tokens * c.d_model**2 / 32)  # SPEC §3: n_kv·d²/32
        assert c.n_total + c.kv_params <= 40e9
    assert res.best.loss > free.best.loss


def test_inference_tokens_move_choice_towards_more_experts():
    """SPEC §4: MoE's fewer FLOPs/token make it more attractive as the inference load grows."""
    chosen = [optimal.memory_optimal(LAW, 1e24, 40e9, inference_tokens=t).best.experts
              for t in (0.0, 1e13, 3e13, 1e14)]
    assert chosen[0] == 1
    assert all(a <= b for a, b in zip(chosen, chosen[1:]))
    assert chosen[-1] >= 8


def test_inference_aware_compute_optimal_spends_budget_exactly():
    flops, d_inf = 1e22, 1e12
    rows = optimal.compute_optimal(LAW, flops, [1, 32], inference_tokens=d_inf)
    plain = optimal.compute_optimal(LAW, flops, [1, 32])
    for r, p in zip(rows, plain):
        assert 6 * r.n_act * r.tokens + 2 * r.n_act * d_inf == pytest.approx(flops, rel=1e-9)
        assert r.n_act < p.n_act and r.loss > p.loss  # inference cost favours smaller models
        # Optimal: nudging N either way is worse.
        for f in (0.95, 1.05):
            n = r.n_act * f
            assert float(LAW.loss(n, (flops - 2 * n * d_inf) / (6 * n), r.experts)) > r.loss


def test_inference_budget_spent_is_a_user_error():
    with pytest.raises(UserError, match="inference tokens spend the whole budget"):
        optimal.compute_optimal(LAW, 1e18, inference_tokens=1e12)
    with pytest.raises(UserError, match="inference tokens spend the whole budget"):
        optimal.memory_optimal(LAW, 1e18, 40e9, inference_tokens=1e12)


def test_memory_too_small_names_smallest_model():
    smallest = optimal.smallest_model_params(1)
    assert smallest == pytest.approx(13 * 64**2 + 2 * 50257 * 64)
    with pytest.raises(UserError, match=r"too small for any model.*needs 6\.486e\+06 parameters"):
        optimal.memory_optimal(LAW, 1e20, 1e6)


@pytest.mark.parametrize("flops", [1e20, 1e22, 1e24])
@pytest.mark.parametrize("experts", [2, 4, 8])
def test_e_times_tokens_at_equal_total_params_beats_dense(flops, experts):
    """SPEC §4 rule of thumb: an E ≤ 8 MoE with the dense optimum's N as its total, on E·D* tokens, wins."""
    cmp = optimal.equal_total_params_comparison(LAW, flops, experts)
    dense, moe = cmp["dense"], cmp["moe"]
    (ref,) = optimal.compute_optimal(LAW, flops, [1])
    assert dense["n_act"] == pytest.approx(ref.n_act) and dense["loss"] == pytest.approx(ref.loss)
    d = moe["d_model"]
    assert counting.paper_n_total(d, d / 64, experts) == pytest.approx(dense["n_act"], rel=1e-9)
    assert moe["tokens"] == pytest.approx(experts * dense["tokens"])
    assert moe["loss"] == pytest.approx(float(LAW.loss(moe["n_act"], moe["tokens"], experts)))
    assert cmp["moe_wins"] and moe["loss"] < dense["loss"]


def test_e_times_tokens_rule_is_limited_to_small_e():
    """The rule is stated for E ≤ 8: at 1e24 FLOPs, E = 32 with the same total params loses."""
    cmp = optimal.equal_total_params_comparison(LAW, 1e24, 32)
    assert not cmp["moe_wins"] and cmp["moe"]["loss"] > cmp["dense"]["loss"]


def test_memory_optimal_grid_agrees_with_pointwise():
    flops = np.array([1e21, 1e22, 1e24])
    memory = np.array([12e9, 40e9, 320e9])
    grid = optimal.memory_optimal_grid(LAW, flops, memory)
    for (f, m), want in SPEC_MEMORY_OPTIMAL.items():
        assert grid[list(memory).index(m), list(flops).index(f)] == want
    assert optimal.memory_optimal_grid(LAW, flops, [1e5]).tolist() == [[0, 0, 0]]


def test_chinchilla_law_has_no_expert_dependence():
    chin = load_law("epoch2024")
    (r,) = optimal.compute_optimal(chin, 1e22, [1])
    assert r.loss == pytest.approx(float(chin.loss(r.n_act, r.tokens)))
    with pytest.raises(UserError, match="no expert dependence"):
        optimal.compute_optimal(chin, 1e22, [1, 8])
    assert optimal.memory_optimal(chin, 1e22, 40e9, [1]).best.experts == 1


@pytest.mark.parametrize("bad", [[0], [1, 1], [1.5], ["x"], []])
def test_bad_expert_lists(bad):
    with pytest.raises(UserError, match="expert counts"):
        optimal.check_experts(LAW, bad)


@pytest.mark.parametrize("flops", [0, -1e20, float("nan"), float("inf"), "abc"])
def test_bad_flops(flops):
    with pytest.raises(UserError, match="flops"):
        optimal.compute_optimal(LAW, flops)
