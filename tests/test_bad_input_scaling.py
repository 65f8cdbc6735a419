"""Bad input and out-of-range requests to `law`, `plan` and `fit` (issue 10): exit code 2 with one stderr
line naming the problem and a valid alternative, or a labelled extrapolation warning; nothing already in
the output directory changes."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from moe_jax.cli import attach_negative_numbers, main
from moe_jax.scaling import constants
from moe_jax.scaling.constants import EPOCH2024_CSV


def snapshot(directory) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def out_dir(tmp_path):
    """An output directory that already holds a result the failed command must not touch."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "fit.json").write_text('{"kept": true}\n')
    (d / "loss_vs_flops.png").write_bytes(b"\x89PNG earlier plot")
    return d


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, command, *fragments):
    assert rc == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"moe-jax {command}: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def coeff_file(tmp_path, **changes):
    path = tmp_path / "coeffs.json"
    path.write_text(json.dumps({"coefficients": {**constants.JOINT_PAPER2025, **changes}}))
    return path


PLAN_ERRORS = [
    # (argv after `plan`, fragments of the one line)
    (["--flops", "1e5"], ["budget of 100000 FLOPs is too small", "d_model 64", "use --flops ≥ 6.4e+16"]),
    (["--flops", "-1e22"], ["--flops must be a finite positive number, got '-1e22'; e.g. --flops 1e22"]),
    (["--flops", "-inf"], ["--flops must be a finite positive number, got '-inf'"]),
    (["--flops", "1e40", "--memory", "1e30"], ["beyond the sweep's limit of d_model 131,072", "lower --memory"]),
    (["--flops", "1e22", "--coeffs", "/missing/coeffs.json"], ["coefficient file /missing/coeffs.json not found"]),
    (["--flops", "1e22", "--experts", "2.5"], ["--experts must be a comma-separated list of integers ≥ 1"]),
]


@pytest.mark.parametrize("argv, fragments", PLAN_ERRORS)
def test_plan_bad_input_is_one_line_and_keeps_files(capsys, out_dir, argv, fragments):
    before = snapshot(out_dir)
    rc, out, err = run_cli(capsys, "plan", *argv, "--plot", out_dir)
    assert_one_line_error(rc, out, err, "plan", *fragments)
    assert snapshot(out_dir) == before


NUMERIC_FLAG_ERRORS = [
    # (argv with a bad or missing number, the flag): the one line ends with '; e.g. FLAG VALUE'
    (["plan"], "--flops"),
    (["plan", "--flops", "-1e22"], "--flops"),
    (["plan", "--flops", "lots"], "--flops"),
    (["plan", "--flops", "1e20", "--memory", "80GB", "--bytes-per-param", "0"], "--bytes-per-param"),
    (["plan", "--flops", "1e20", "--memory", "80GB", "--kv-tokens", "-1"], "--kv-tokens"),
    (["plan", "--flops", "1e20", "--inference-tokens", "-5"], "--inference-tokens"),
    (["law", "--n-act", "-1e8", "--tokens", "1e10"], "--n-act"),
    (["law", "--n-act", "1e8", "--tokens", "nan"], "--tokens"),
]


@pytest.mark.parametrize("argv, flag", NUMERIC_FLAG_ERRORS)
def test_numeric_flag_error_gives_an_example_that_works(capsys, argv, flag):
    rc, out, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, out, err, argv[0], f"; e.g. {flag} ")
    example = re.search(rf"; e\.g\. {flag} (\S+)$", err.rstrip("\n")).group(1)
    fixed = argv[:argv.index(flag) + 1] + [example] + argv[argv.index(flag) + 2:] if flag in argv else [*argv, flag, example]
    rc, out, err = run_cli(capsys, *fixed)
    assert rc == 0 and out, (fixed, err)


def test_memory_that_is_zero_names_a_valid_size(capsys):
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e20", "--memory", "0GB")
    assert_one_line_error(rc, out, err, "plan", "memory must be positive, got '0GB'; use e.g. 24GB or 80GB")
    assert run_cli(capsys, "plan", "--flops", "1e20", "--memory", "24GB")[0] == 0


LAW_ERRORS = [
    (["--experts", "2.5"], ["--experts must be an integer ≥ 1", "got '2.5'", "e.g. 2 or 3"]),
    (["--experts", "0"], ["--experts must be an integer ≥ 1"]),
    (["--tokens", "-1e10"], ["--tokens must be a finite positive number, got '-1e10'"]),
    (["--coeffs", "/missing.json"], ["coefficient file /missing.json not found", "paper2025"]),
    (["--coeffs", "paper2024"], ["unknown coefficient set 'paper2024'"]),
]


@pytest.mark.parametrize("argv, fragments", LAW_ERRORS)
def test_law_bad_input_is_one_line(capsys, argv, fragments):
    base = {"--n-act": "1e8", "--tokens": "1e10"}
    for flag in argv[::2]:
        base.pop(flag, None)
    rc, out, err = run_cli(capsys, "law", *[x for kv in base.items() for x in kv], *argv)
    assert_one_line_error(rc, out, err, "law", *fragments)


@pytest.mark.parametrize("changes, fragments", [
    ({"ln_estart": 6.0}, ["ln_estart=6 must be below ln_emax=5.67144"]),
    ({"A": -1.0}, ["coefficient A=-1 must be > 0"]),
    ({"C": -0.5}, ["coefficient C=-0.5 must be ≥ 0"]),
    ({"gamma": -0.2}, ["exponent alpha at E=32 is", "must be > 0"]),
])
def test_coefficient_files_are_validated(capsys, tmp_path, changes, fragments):
    path = coeff_file(tmp_path, **changes)
    for command in (["law", "--n-act", "1e8", "--tokens", "1e10"], ["plan", "--flops", "1e22"]):
        rc, out, err = run_cli(capsys, *command, "--coeffs", path)
        assert_one_line_error(rc, out, err, command[0], str(path), *fragments)


def test_valid_coefficient_file_round_trips(capsys, tmp_path):
    path = coeff_file(tmp_path)
    a = json.loads(run_cli(capsys, "law", "--n-act", "1e8", "--tokens", "1e10", "--coeffs", path, "--json")[1])
    assert a["loss"] == pytest.approx(3.0165, abs=1e-4)  # SPEC §1 sanity value


def extrapolation_lines(err: str, command: str) -> list[str]:
    lines = err.splitlines()
    assert all(line.startswith(f"moe-jax {command}: warning: extrapolation: ") for line in lines), err
    return lines


def test_in_range_plan_has_no_warning(capsys):
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e20", "--json")  # N* of every E within d512..d2304
    assert rc == 0 and err == "" and json.loads(out)["warnings"] == []


def test_huge_budget_is_labelled_extrapolation(capsys):
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e40")
    assert rc == 0
    (line,) = extrapolation_lines(err, "plan")
    assert "compute-optimal d_model" in line and "23,606,200" in line and "above the largest shape" in line
    assert "d2304" in line and "recommended: E=32" in out


def test_small_budget_is_labelled_extrapolation(capsys):
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e17", "--memory", "24GB", "--json")
    assert rc == 0
    lines = extrapolation_lines(err, "plan")
    assert len(lines) == 2 and all("below the smallest shape the law was fitted on, d512" in x for x in lines)
    assert json.loads(out)["warnings"] == [x.split("warning: ", 1)[1] for x in lines]


def test_many_experts_are_labelled_extrapolation(capsys):
    rc, out, err = run_cli(capsys, "plan", "--flops", "1e20", "--experts", "1,1000")
    assert rc == 0
    assert extrapolation_lines(err, "plan") == [
        "moe-jax plan: warning: extrapolation: E=1000 is beyond the expert counts the law was fitted on (1..32); "
        "predictions there rest on the fitted saturation E_max alone"]
    rc, out, err = run_cli(capsys, "law", "--n-act", "1e8", "--tokens", "1e10", "--experts", "64")
    assert rc == 0 and len(extrapolation_lines(err, "law")) == 1 and "E=64" in err
    rc, out, err = run_cli(capsys, "law", "--n-act", "1e8", "--tokens", "1e10", "--experts", "32")
    assert rc == 0 and err == ""


def test_law_small_n_act_warns_but_chinchilla_law_does_not(capsys):
    rc, out, err = run_cli(capsys, "law", "--n-act", "1e7", "--tokens", "1e10")
    assert rc == 0 and "N_act 1e+07 = d_model" in err and "below the smallest shape" in err
    rc, out, err = run_cli(capsys, "law", "--n-act", "1e7", "--tokens", "1e10", "--coeffs", "hoffmann2022")
    assert rc == 0 and err == ""


def test_negative_numbers_attach_to_their_option():
    assert attach_negative_numbers(["--flops", "-1e22", "--seed", "-1"]) == ["--flops=-1e22", "--seed=-1"]
    assert attach_negative_numbers(["--x=1", "-2", "--json", "-h"]) == ["--x=1", "-2", "--json", "-h"]


@pytest.fixture(scope="module")
def epoch_frame():
    df = pd.read_csv(EPOCH2024_CSV)
    return df[df["outlier"] != 1]


def test_fit_seed_must_be_non_negative(capsys, tmp_path, out_dir, epoch_frame):
    csv = tmp_path / "runs.csv"
    epoch_frame.head(40).to_csv(csv, index=False)
    before = snapshot(out_dir)
    rc, out, err = run_cli(capsys, "fit", csv, "--law", "chinchilla", "--bootstrap", "2", "--seed", "-1",
                           "--out", out_dir)
    assert_one_line_error(rc, out, err, "fit", "bootstrap seed must be an integer in 0..2^63-1, got -1",
                          "--seed 0")
    assert snapshot(out_dir) == before


def test_fit_refuses_fewer_runs_than_parameters(capsys, tmp_path, out_dir, epoch_frame):
    csv = tmp_path / "runs.csv"
    epoch_frame.head(5).to_csv(csv, index=False)
    before = snapshot(out_dir)
    rc, out, err = run_cli(capsys, "fit", csv, "--law", "chinchilla", "--out", out_dir, "--quiet")
    assert_one_line_error(rc, out, err, "fit", "5 usable run(s) but a chinchilla fit has 5 parameters")
    assert snapshot(out_dir) == before


def test_fit_with_few_runs_per_parameter_warns(capsys, tmp_path, epoch_frame):
    csv = tmp_path / "runs.csv"
    epoch_frame.head(6).to_csv(csv, index=False)  # the example: A comes out at 3.5e13
    rc, out, err = run_cli(capsys, "fit", csv, "--law", "chinchilla", "--grid", "small", "--quiet", "--json")
    assert rc == 0
    assert err == ("moe-jax fit: warning: only 6 training runs for the 5 parameters of a chinchilla law: the "
                   "coefficients are poorly determined (stable from about 30 runs); add runs or check them with "
                   "--bootstrap 100\n")
    assert json.loads(out)["warnings"] == [err.split("warning: ", 1)[1].rstrip("\n")]
    epoch_frame.head(30).to_csv(csv, index=False)
    rc, out, err = run_cli(capsys, "fit", csv, "--law", "chinchilla", "--grid", "small", "--quiet", "--json")
    assert rc == 0 and err == "" and json.loads(out)["warnings"] == []
