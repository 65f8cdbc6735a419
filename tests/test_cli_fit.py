"""`moe-jax fit` end to end: JSON contract, --out files, the --coeffs round trip, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moe_jax.cli import main
from moe_jax.scaling.fit import n_opt
from moe_jax.scaling.fit_data import synthetic_runs
from moe_jax.scaling.constants import EPOCH2024_CSV
from moe_jax.scaling.law import JointLaw, load_law

EPOCH_CSV = EPOCH2024_CSV  # shipped in the package (moe_jax/scaling/data/README.md)


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def epoch_csv():
    if not EPOCH_CSV.exists():
        pytest.fail(f"test data missing: {EPOCH_CSV}")
    return EPOCH_CSV


def test_fit_json_contract_and_out_dir(capsys, tmp_path, epoch_csv):
    out_dir = tmp_path / "fit"
    rc, out, err = run_cli(capsys, "fit", epoch_csv, "--law", "chinchilla", "--grid", "small", "--json",
                           "--out", out_dir)
    assert rc == 0, err
    assert "[fit] screening stage 1/3" in err and "polishing" in err  # progress goes to stderr
    result = json.loads(out)
    assert result["law"] == "chinchilla"
    assert list(result["coefficients"]) == ["A", "alpha", "B", "beta", "C"]
    assert result["n_train"] == 240 and result["n_heldout"] == 0 and result["rmse_heldout"] is None
    assert result["coefficients"]["alpha"] == pytest.approx(0.3473, abs=1e-4)  # SPEC §2
    assert result["objective"] == pytest.approx(1.01827e-3, rel=1e-5)
    assert "intervals" not in result
    assert json.loads((out_dir / "fit.json").read_text())["coefficients"] == result["coefficients"]
    for png in ("loss_vs_flops.png", "residuals.png", "compute_optimal.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --coeffs round trip through `law` and `plan`.
    law = load_law(str(out_dir / "fit.json"))
    rc, out, err = run_cli(capsys, "law", "--n-act", "1e9", "--tokens", "2e10", "--coeffs", out_dir / "fit.json", "--json")
    assert rc == 0, err
    assert json.loads(out)["loss"] == pytest.approx(float(law.loss(1e9, 2e10)), rel=1e-12)
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e20", "--coeffs", out_dir / "fit.json", "--json")
    assert rc == 0, err
    row = json.loads(out)["compute_optimal"][0]
    assert row["n_act"] == pytest.approx(result["derived"]["n_opt_F1e+20"], rel=1e-9)


def test_joint_fit_human_output_with_bootstrap_and_plan_round_trip(capsys, tmp_path):
    law = load_law("paper2025")
    runs = synthetic_runs(law, noise=0.005, n_points=90, seed=4)
    csv = tmp_path / "runs.csv"
    runs.frame().to_csv(csv, index=False)
    rc, out, err = run_cli(capsys, "fit", csv, "--law", "joint", "--grid", "small", "--heldout-lowest", "5",
                           "--bootstrap", "2", "--out", tmp_path / "o")
    assert rc == 0, err
    assert "bootstrap 2/2" in err
    assert "joint law fitted to 85 runs (5 held out of 90)" in out
    assert "2.5%" in out and "ln_emax" in out
    saved = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert set(saved["intervals"]["coefficients"]) == set(law.to_dict())
    assert len(saved["intervals"]["samples"]) == 2 and saved["intervals"]["sample_keys"] == list(law.to_dict())
    assert (tmp_path / "o" / "fit_per_expert.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["rmse_heldout"] < 0.02
    fitted = load_law(str(tmp_path / "o" / "fit.json"))
    assert isinstance(fitted, JointLaw)
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e21", "--experts", "1,8", "--coeffs", tmp_path / "o" / "fit.json", "--json")
    assert rc == 0, err
    rows = json.loads(out)["compute_optimal"]
    assert [r["experts"] for r in rows] == [1, 8]
    assert rows[1]["n_act"] == pytest.approx(n_opt(fitted, 1e21, 8), rel=1e-9)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["{missing}", "--law", "chinchilla"], "does not exist"),
        (["{csv}", "--law", "joint"], "missing column 'experts'"),
        (["{csv}", "--law", "chinchilla", "--huber-delta", "-1"], "Huber delta must be a positive number, got -1.0; e.g. --huber-delta 1e-3"),
        (["{csv}", "--law", "chinchilla", "--heldout-lowest", "240"], "held-out size must be in 0..239"),
        (["{csv}", "--law", "chinchilla", "--bootstrap", "-2"], "bootstrap count must be >= 0, got -2; e.g. --bootstrap 0"),
        (["{csv}", "--law", "chinchilla", "--out", "{csv}"], "is not a directory"),
        (["{csv}", "--law", "chinchilla", "--bogus"], "unrecognised arguments: --bogus"),
        (["{csv}", "--law", "chinchilla", "--weights", "paper", "--l2", "-1"], "L2 penalty must be >= 0, got -1.0; e.g. --l2 0"),
        (["{csv}", "--law", "chinchilla", "--heldout-lowest", "236"], "4 training runs after holding out 236"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, epoch_csv, args, fragment):
    argv = [a.format(csv=epoch_csv, missing=tmp_path / "none.csv") for a in args]
    rc, out, err = run_cli(capsys, "fit", *argv)
    assert rc == 2
    assert fragment in err
    assert err.startswith("moe-jax fit: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_law_and_grid_are_argparse_errors(capsys, epoch_csv):
    for args in (["--law", "moe"], ["--law", "joint", "--grid", "huge"]):
        with pytest.raises(SystemExit) as exc:
            main(["fit", str(epoch_csv), *args])
        assert exc.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_fit_modules_never_import_jax():
    import subprocess
    import sys

    code = ("import sys, moe_jax.scaling.cli_fit, moe_jax.scaling.fit, moe_jax.scaling.fit_search; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
