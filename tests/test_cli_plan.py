"""`moe-jax law` and `moe-jax plan` through moe_jax.cli.main: SPEC §4 numbers, JSON contract, errors."""

import json

import pytest

from moe_jax.cli import main
from moe_jax.scaling import counting
from test_scaling_optimal import SPEC_COMPUTE_OPTIMAL, SPEC_MEMORY_OPTIMAL


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv):
    rc, out, err = run_cli(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("flops", [1e20, 1e22])
def test_plan_reproduces_spec_compute_optimal_table(capsys, flops):
    plan = run_json(capsys, "plan", "--flops", f"{flops:g}")
    rows = {r["experts"]: r for r in plan["compute_optimal"]}
    assert sorted(rows) == [1, 2, 4, 8, 16, 32]
    assert "memory_optimal" not in plan
    for (f, e), (n, d, loss) in SPEC_COMPUTE_OPTIMAL.items():
        if f != flops:
            continue
        assert rows[e]["n_act"] == pytest.approx(n, rel=5e-3)
        assert rows[e]["tokens"] == pytest.approx(d, rel=5e-3)
        assert rows[e]["loss"] == pytest.approx(loss, abs=1e-3)
        assert rows[e]["lr"] == pytest.approx(counting.lr_for(rows[e]["n_act"], e))


@pytest.mark.parametrize("flops, memory", sorted(SPEC_MEMORY_OPTIMAL))
def test_plan_memory_optimal_cells(capsys, flops, memory):
    gb = {12e9: "24GB", 40e9: "80GB", 320e9: "640GB"}[memory]
    m = run_json(capsys, "plan", "--flops", f"{flops:g}", "--memory", gb)["memory_optimal"]
    assert m["experts"] == SPEC_MEMORY_OPTIMAL[(flops, memory)]
    for key in ("d_model", "n_layers", "n_act", "n_total", "tokens", "loss", "margin"):
        assert isinstance(m[key], (int, float)), key
    assert m["n_total"] <= memory
    assert m["runner_up"]["experts"] != m["experts"]
    assert m["margin"] == pytest.approx(m["runner_up"]["loss"] - m["loss"]) and m["margin"] > 0


def test_bytes_per_param_scales_memory(capsys):
    a = run_json(capsys, "plan", "--flops", "1e22", "--memory", "80GB")["memory_optimal"]
    b = run_json(capsys, "plan", "--flops", "1e22", "--memory", "160GB", "--bytes-per-param", "4")["memory_optimal"]
    assert (a["experts"], a["d_model"], a["loss"]) == (b["experts"], b["d_model"], b["loss"])


def test_plan_human_output_names_recommendation_with_lr(capsys):
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e22", "--memory", "80GB", "--realistic")
    assert rc == 0
    # 1e22 FLOPs buys models above the largest fitted shape: labelled, one line per table.
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith(
        "moe-jax plan: warning: extrapolation: ") and "above the largest shape the law was fitted on, d2304" in line]
    assert len(err.splitlines()) == 2
    plan = run_json(capsys, "plan", "--flops", "1e22", "--memory", "80GB", "--realistic")["memory_optimal"]
    line = [x for x in out.splitlines() if x.startswith("recommended:")]
    assert len(line) == 1
    assert f"E={plan['experts']}, d_model={plan['d_model']}, {plan['n_layers']} layers" in line[0]
    assert f"peak LR {counting.lr_for(plan['n_act'], plan['experts']):.2e}" in line[0]
    assert f"predicted loss {plan['loss']:.4f}" in line[0]
    assert "runner-up: E=" in out


def test_plan_kv_and_inference_flags(capsys):
    free = run_json(capsys, "plan", "--flops", "1e24", "--memory", "80GB")["memory_optimal"]
    kv = run_json(capsys, "plan", "--flops", "1e24", "--memory", "80GB", "--kv-tokens", "1e5")["memory_optimal"]
    assert kv["kv_params"] == pytest.approx(1e5 * kv["d_model"] ** 2 / 32)
    assert kv["n_total"] + kv["kv_params"] <= 40e9 and kv["loss"] > free["loss"]
    inf = run_json(capsys, "plan", "--flops", "1e24", "--memory", "80GB", "--inference-tokens", "1e14")
    assert inf["memory_optimal"]["experts"] > free["experts"]
    for r in inf["compute_optimal"]:
        assert 6 * r["n_act"] * r["tokens"] + 2 * r["n_act"] * 1e14 == pytest.approx(1e24, rel=1e-9)


def test_plan_with_fit_json_and_chinchilla_set(capsys, tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"coefficients": {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "C": 1.69}}))
    a = run_json(capsys, "plan", "--flops", "1e22", "--coeffs", str(path))
    b = run_json(capsys, "plan", "--flops", "1e22", "--coeffs", "hoffmann2022")
    assert [r["experts"] for r in a["compute_optimal"]] == [1]
    assert a["compute_optimal"] == b["compute_optimal"]


def test_plan_writes_plots(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e22", "--memory", "80GB", "--experts", "1,4,16",
                           "--plot", str(tmp_path / "plots"))
    assert rc == 0, err
    for name in ("loss_vs_flops.png", "memory_optimal_map.png"):
        p = tmp_path / "plots" / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {p}" in out


@pytest.mark.parametrize("experts, expected", [("1", 3.0165), ("4", 2.9511), ("32", 2.8264)])
def test_law_command_sanity_values(capsys, experts, expected):
    got = run_json(capsys, "law", "--n-act", "1e8", "--tokens", "1e10", "--experts", experts)
    assert got["loss"] == pytest.approx(expected, abs=1e-4)
    rc, out, _ = run_cli(capsys, "law", "--n-act", "1e8", "--tokens", "1e10", "--experts", experts)
    assert rc == 0 and f"predicted loss {got['loss']:.4f}" in out


BAD_INPUT = [
    (["plan"], "--flops is required"),
    (["plan", "--flops", "nan"], "--flops must be a finite positive number"),
    (["plan", "--flops=-1e20"], "--flops must be a finite positive number"),
    (["plan", "--flops", "0"], "--flops must be a finite positive number"),
    (["plan", "--flops", "lots"], "--flops must be a number"),
    (["plan", "--flops", "1e22", "--memory", "1MB"], "too small for any model: the smallest (d_model 64"),
    (["plan", "--flops", "1e22", "--memory", "80XB"], "cannot parse memory '80XB'"),
    (["plan", "--flops", "1e22", "--coeffs", "paper2024"], "unknown coefficient set 'paper2024'"),
    (["plan", "--flops", "1e22", "--experts", "1,x"], "--experts must be a comma-separated list"),
    (["plan", "--flops", "1e22", "--experts", "0,2"], "--experts must be a comma-separated list"),
    (["plan", "--flops", "1e22", "--experts", ""], "--experts must be a comma-separated list"),
    (["plan", "--flops", "1e22", "--experts", "2,2"], "must not repeat"),
    (["plan", "--flops", "1e22", "--experts", "1,8", "--coeffs", "epoch2024"], "no expert dependence"),
    (["plan", "--flops", "1e20", "--inference-tokens", "1e15"], "spend the whole budget"),
    (["plan", "--flops", "1e20", "--memory", "80GB", "--inference-tokens", "1e15"], "spend the whole budget"),
    (["plan", "--flops", "1e20", "--inference-tokens", "-5"], "--inference-tokens must be a finite number ≥ 0"),
    (["plan", "--flops", "1e20", "--kv-tokens", "1e5"], "add --memory"),
    (["plan", "--flops", "1e20", "--memory", "80GB", "--bytes-per-param", "0"], "--bytes-per-param must be"),
    (["plan", "--flops", "1e20", "--frobnicate"], "unrecognised arguments: --frobnicate"),
    (["law", "--tokens", "1e10"], "--n-act is required"),
    (["law", "--n-act", "1e8", "--tokens", "inf"], "--tokens must be a finite positive number"),
    (["law", "--n-act", "1e8", "--tokens", "1e10", "--experts", "0.5"], "--experts must be an integer ≥ 1"),
    (["law", "--n-act", "1e8", "--tokens", "1e10", "--experts", "4", "--coeffs", "hoffmann2022"],
     "no expert dependence"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"moe-jax {argv[0]}: error: ") and message in err


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"A": 1}', '{"A": "x", "alpha": 1, "B": 1, "beta": 1, "C": 1}'])
def test_unreadable_coefficient_files(capsys, tmp_path, content):
    path = tmp_path / "coeffs.json"
    path.write_text(content)
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e22", "--coeffs", str(path))
    assert rc == 2 and out == "" and err.count("\n") == 1 and str(path) in err


def test_law_and_plan_never_import_jax_or_tensorflow():
    import subprocess
    import sys

    code = ("import sys, moe_jax.cli, moe_jax.scaling.cli_plan, moe_jax.scaling.cli_law, moe_jax.scaling.plots; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
