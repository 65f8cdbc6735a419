"""A law's shape rule and fitted range travel from `moe-jax fit` to `moe-jax plan --coeffs FIT.json`.

The CPU-scale rule (layers = heads = d/16, head dim 16, byte vocabulary 259) sizes the plan's models and
the fit's own range (d_model 16..64, E 1..8) labels extrapolation; the paper's rule is unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from moe_jax.cli import main
from moe_jax.errors import UserError
from moe_jax.scaling import counting, optimal, plots
from moe_jax.scaling.counting import ModelShape, format_count
from moe_jax.scaling.fit_data import RunData, shape_summary
from moe_jax.scaling.fitted_range import FittedRange
from moe_jax.scaling.law import load_law
from moe_jax.scaling.shape_rule import PAPER_RULE, ShapeRule

CPU_RULE = ShapeRule(head_dim=16, vocab=259)
WIDTHS, EXPERTS, TOKENS = (16, 32, 48, 64), (1, 2, 4, 8), (1.024e6, 2.048e6, 4.096e6, 8.192e6)


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cpu_shape(d: int, experts: int = 1) -> ModelShape:
    return ModelShape(d, d // 16, d // 16, 16, 3 * d, experts, vocab=259)


# ---------------------------------------------------------------- the rule itself


@pytest.mark.parametrize("experts", [1, 8])
def test_cpu_rule_counts_match_the_built_shape_without_norms(experts):
    for d in WIDTHS:
        c = cpu_shape(d, experts).counts()
        assert CPU_RULE.n_act(d) == c["n_act"] - c["n_norm"]
        assert CPU_RULE.n_total(d, experts) == c["n_total"] - c["n_norm"]
        assert CPU_RULE.kv_params_per_token(d) == 2 * (d // 16) * d and CPU_RULE.layers(d) == d // 16


@pytest.mark.parametrize("total,experts", [(False, 1), (True, 1), (True, 8)])
def test_cpu_rule_d_for_params_inverts_the_counts(total, experts):
    d = np.array([16.0, 32.0, 64.0, 100.5, 4096.0])
    n = CPU_RULE.n_total(d, experts) if total else CPU_RULE.n_act(d)
    np.testing.assert_allclose(CPU_RULE.d_for_params(n, experts, total), d, rtol=1e-10)
    assert not np.allclose(PAPER_RULE.d_for_params(n, experts, total), d, rtol=1e-2)  # the rule matters


def test_paper_rule_is_todays_paper_shape():
    d = np.array([64.0, 512.0, 2304.0, 12345.6])
    np.testing.assert_allclose(PAPER_RULE.d_for_params(counting.paper_n_act(d, d / 64)), d, rtol=1e-12)
    n = np.array([1e6, 3e8, 7e10])
    assert np.array_equal(optimal.d_model_for_params(n, 8, total=True), PAPER_RULE.d_for_params(n, 8, total=True))
    law = load_law("paper2025")
    default = [r.to_dict() for r in optimal.compute_optimal(law, 1e21)]
    assert default == [r.to_dict() for r in optimal.compute_optimal(law, 1e21, shape=ShapeRule(64, 50257))]
    assert "shape" not in default[0] and default[0]["n_layers"] == default[0]["d_model"] / 64
    mem = optimal.memory_optimal(law, 1e21, 12e9, realistic=True)
    assert mem == optimal.memory_optimal(law, 1e21, 12e9, realistic=True, shape=PAPER_RULE)
    assert optimal.smallest_model_params(1) == counting.paper_n_total(64, 1, 1)


def test_rule_dict_round_trip_and_bad_values():
    assert ShapeRule.from_dict(CPU_RULE.to_dict()) == CPU_RULE and PAPER_RULE.to_dict() == {
        "head_dim": 64, "vocab": 50257}
    for bad in ({"head_dim": 0, "vocab": 259}, {"head_dim": "x", "vocab": 259}, {"head_dim": 16.5, "vocab": 259},
                {"head_dim": 16}, {"head_dim": True, "vocab": 259}, [16, 259]):
        with pytest.raises(UserError, match=r"^f\.json: shape_rule") as err:
            ShapeRule.from_dict(bad, "f.json")
        assert "\n" not in str(err.value)


def test_memory_and_compute_optimal_follow_the_rule():
    law = load_law("paper2025")
    rows = optimal.compute_optimal(law, 1e13, (1, 8), shape=CPU_RULE)
    for r in rows:
        assert CPU_RULE.n_act(r.d_model) == pytest.approx(r.n_act, rel=1e-10)
        assert r.to_dict()["n_layers"] == pytest.approx(r.d_model / 16)
    mem = optimal.memory_optimal(law, 1e13, 5e5, (1, 8), realistic=True, shape=CPU_RULE)
    for c in mem.per_expert:
        assert c.d_model % 16 == 0 and c.n_layers == c.d_model // 16
        assert c.n_total == CPU_RULE.n_total(c.d_model, c.experts) <= 5e5
    with pytest.raises(UserError, match=r"the smallest \(d_model 64, 1 layer, E=1\) needs 6.486e\+06"):  # paper rule
        optimal.memory_optimal(law, 1e13, 5e5, (1, 8))
    with pytest.raises(UserError, match=r"smallest shape-rule model \(d_model 16, 1 layer, N_act 1.16e\+04\)"):
        optimal.compute_optimal(law, 1e8, (1,), shape=CPU_RULE)


# ---------------------------------------------------------------- the fit records it


def test_shape_summary_infers_only_what_the_columns_say():
    d = np.array([16.0, 32.0, 64.0])
    base = dict(n_act=CPU_RULE.n_act(d), tokens=np.array([1e6, 2e6, 4e6]), loss=np.ones(3),
                experts=np.array([1.0, 8.0, 2.0]))
    assert shape_summary(RunData(**base)) == (None, None, [])
    fitted, rule, notes = shape_summary(RunData(**base, d_model=d, n_layers=d / 16, vocab=np.full(3, 259.0)))
    assert rule == {"head_dim": 16, "vocab": 259} and notes == []
    assert fitted == {"d_model": [16.0, 64.0], "n_act": [float(CPU_RULE.n_act(16)), float(CPU_RULE.n_act(64))],
                      "tokens": [1e6, 4e6], "experts": [1, 2, 8]}
    assert shape_summary(RunData(**base, d_model=d, n_layers=d / 16))[1] is None  # no vocab column: no guess
    mixed = np.array([1.0, 2.0, 2.0])  # d / L = 16, 16, 32
    _, rule, notes = shape_summary(RunData(**base, d_model=d, n_layers=mixed, vocab=np.full(3, 259.0)))
    assert rule is None and "d_model / n_layers = 16, 32" in notes[0]
    _, rule, notes = shape_summary(RunData(**base, d_model=d, n_layers=d / 16, vocab=np.array([259.0, np.nan, 259])))
    assert rule is None and "vocab" in notes[0]


@pytest.fixture(scope="module")
def cpu_fit(tmp_path_factory):
    """A joint fit (small grid) to 64 synthetic CPU-scale runs: the paper's law with 0.2 % noise at d16..d64."""
    root = tmp_path_factory.mktemp("cpu_fit")
    law, rng, rows = load_law("paper2025"), np.random.default_rng(0), []
    for d in WIDTHS:
        for e in EXPERTS:
            for t in TOKENS:
                c = cpu_shape(d, e).counts()  # N_act incl. embeddings and norms, as sweep collect records it
                loss = float(law.loss(c["n_act"], t, e)) * float(np.exp(0.002 * rng.standard_normal()))
                rows.append(dict(n_act=c["n_act"], n_total=c["n_total"], tokens=t, experts=e, loss=loss,
                                 flops=6 * c["n_act"] * t, d_model=d, n_layers=d // 16, kind="branch",
                                 run=f"d{d}_E{e}_T{t:.0f}", vocab=259))
    pd.DataFrame(rows).to_csv(root / "runs.csv", index=False)
    assert main(["fit", str(root / "runs.csv"), "--law", "joint", "--grid", "small", "--out", str(root / "fit"),
                 "--quiet", "--json"]) == 0
    return root / "fit" / "fit.json"


def test_fit_json_records_rule_and_range(cpu_fit):
    fit = json.loads(cpu_fit.read_text())
    assert fit["shape_rule"] == {"head_dim": 16, "vocab": 259}
    n_lo, n_hi = cpu_shape(16).counts()["n_act"], cpu_shape(64).counts()["n_act"]
    assert fit["fitted_range"] == {"d_model": [16, 64], "n_act": [n_lo, n_hi], "tokens": [1.024e6, 8.192e6],
                                   "experts": [1, 2, 4, 8]}


def test_plan_sizes_models_by_the_fits_rule_and_warns_against_its_range(capsys, cpu_fit):
    rc, out, err = run_cli(capsys, "plan", "--coeffs", cpu_fit, "--flops", "1e13", "--json")
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["shape_rule"] == {"head_dim": 16, "vocab": 259}
    assert [r["experts"] for r in plan["compute_optimal"]] == [1, 2, 4, 8]  # the fit's expert counts by default
    for r in plan["compute_optimal"]:
        assert r["n_act"] == pytest.approx(float(CPU_RULE.n_act(r["d_model"])), rel=1e-10)
        assert r["n_layers"] == pytest.approx(r["d_model"] / 16)
        assert 30 < r["d_model"] < 120  # a paper-rule (vocab 50257) d_model for N_act < 1e6 would be < 10
    above = [(r["experts"], r["d_model"]) for r in plan["compute_optimal"] if r["d_model"] > 64]
    assert above  # 1e13 FLOPs buys some models wider than the widest fitted run
    assert any("compute-optimal d_model" in w and f"(E={','.join(str(e) for e, _ in above)})" in w
               and w.endswith("is above the largest shape the law was fitted on, d_model 64 (N_act 247K)")
               for w in plan["warnings"])
    assert not any("d2304" in w or "1..32" in w for w in plan["warnings"])

    rc, out, err = run_cli(capsys, "plan", "--coeffs", cpu_fit, "--flops", "1e13")
    assert rc == 0 and "d_model from the law's shape rule (layers = d/16, head dim 16, vocab 259)" in out
    assert "extrapolation: compute-optimal d_model" in err and "d_model 64 (N_act 247K)" in err
    for r in plan["compute_optimal"]:  # each table row shows the rule's N_act of its d_model
        assert any(line.split()[:2] == [str(r["experts"]), format_count(float(CPU_RULE.n_act(r["d_model"])))]
                   and f"{r['d_model']:.0f}" in line.split() for line in out.splitlines())
    assert "(head dim 16)" in [x for x in out.splitlines() if x.startswith("recommended:")][0]


def test_plan_memory_plots_and_config_at_cpu_scale(capsys, tmp_path, cpu_fit):
    from moe_jax.configlib import load_config

    cfg_path = tmp_path / "planned.py"
    rc, out, err = run_cli(capsys, "plan", "--coeffs", cpu_fit, "--flops", "1e13", "--memory", "1MB", "--realistic",
                           "--json", "--plot", tmp_path / "plots", "--write-config", cfg_path)
    assert rc == 0, err
    mem = json.loads(out)["memory_optimal"]
    assert mem["memory_params"] == 5e5
    for c in mem["per_expert"]:
        assert c["d_model"] % 16 == 0 and c["n_layers"] == c["n_heads"] == c["d_model"] // 16
        assert c["n_total"] == CPU_RULE.n_total(c["d_model"], c["experts"]) <= 5e5
    for name in ("loss_vs_flops.png", "compute_optimal.png", "memory_optimal_map.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = load_config(str(cfg_path))
    m = config.model
    assert (m.d_model, m.experts) == (mem["d_model"], mem["experts"])
    assert (m.head_dim, m.vocab_size, m.n_layers, m.n_heads, m.ffn_hidden) == (
        16, 259, m.d_model // 16, m.d_model // 16, 3 * m.d_model)
    assert config.data.vocab_path == "bytes"  # the packaged byte-level vocabulary has the fit's 259 ids
    assert "heads of 16" in cfg_path.read_text()
    # The paper's rule cannot build any model in 1 MB: the plan above used the fit's.
    rc, _, err = run_cli(capsys, "plan", "--flops", "1e17", "--memory", "1MB")
    assert rc == 2 and "(d_model 64, 1 layer, E=1) needs" in err


def test_law_command_warns_against_the_fits_range(capsys, cpu_fit):
    rc, _, err = run_cli(capsys, "law", "--coeffs", cpu_fit, "--n-act", "1e6", "--tokens", "1e7")
    d = float(CPU_RULE.d_for_params(1e6))
    assert rc == 0 and f"N_act 1e+06 = d_model {d:,.0f} (E=1) is above the largest shape" in err
    assert "d_model 64 (N_act 247K)" in err


@pytest.mark.parametrize("key,value", [("head_dim", 0), ("head_dim", "sixteen"), ("vocab", -3)])
def test_bad_shape_rule_in_fit_json_is_one_line(capsys, tmp_path, cpu_fit, key, value):
    data = json.loads(cpu_fit.read_text())
    data["shape_rule"][key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    rc, out, err = run_cli(capsys, "plan", "--coeffs", path, "--flops", "1e13")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert str(path) in err and f"shape_rule.{key}" in err


def test_bad_fitted_range_in_fit_json_is_one_line(capsys, tmp_path, cpu_fit):
    data = json.loads(cpu_fit.read_text())
    data["fitted_range"]["d_model"] = [64, "x"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    rc, out, err = run_cli(capsys, "plan", "--coeffs", path, "--flops", "1e13")
    assert rc == 2 and err.count("\n") == 1 and "fitted_range.d_model" in err and str(path) in err


def test_memory_map_axes_follow_the_fitted_range():
    fitted = FittedRange.from_runs([16, 64], [1.17e4, 2.47e5], [1e6, 8e6], [1, 8])
    flops, memory = plots.map_ranges((1, 8), CPU_RULE, fitted)
    assert flops == pytest.approx((6 * 1.17e4 * 1e6 / 10, 6 * 2.47e5 * 8e6 * 100))
    assert memory == pytest.approx((CPU_RULE.n_total(16, 1), 100 * CPU_RULE.n_total(64, 8)))
    assert plots.map_ranges((1, 8)) == ((1e19, 1e26), (1e9, 1e12))  # the paper's scale without a range
    _, memory = plots.map_ranges((1, 8), CPU_RULE, fitted, point=(1e13, 1e9))
    assert memory[1] == 3e9  # the marked point is inside the map
