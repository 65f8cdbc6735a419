"""The smoke sweep end to end through the CLI: run, status, rescan, collect → fit, reuse-report, and kills.

The module trains the built-in `smoke` grid once (9 runs, ~1–2 min on 2 cores); the kill tests train a
one-shape grid whose runs are the smoke grid's d16_E1 trunk and branches (the constant-LR trunk's path does
not depend on where it stops), so their results must equal the uninterrupted smoke sweep's rows.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "moe_jax.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=900)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _rows(path) -> dict:
    """{(kind, experts, tokens): row without the run id} of a collected CSV."""
    with open(path) as f:
        return {(r["kind"], r["experts"], r["tokens"]): {k: v for k, v in r.items() if k != "run"} for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("smoke") / "sweep"
    _cli("sweep", "plan", "--grid", "smoke", "--dir", sweep)
    _cli("sweep", "run", "--dir", sweep, "--parallel", "2")
    _cli("sweep", "collect", "--dir", sweep, "--out", sweep / "runs.csv")
    return sweep


def test_collect_then_fit_round_trip(smoke):
    from moe_jax.scaling.fit_data import load_runs
    from moe_jax.sweep.registry import Registry

    with open(smoke / "runs.csv") as f:
        header = next(csv.reader(f))
    assert header == ["n_act", "n_total", "tokens", "experts", "loss", "flops", "d_model", "n_layers", "kind", "run",
                      "vocab"]  # columns added later come last
    rows = _rows(smoke / "runs.csv")
    assert {(r["d_model"], r["n_layers"], r["vocab"]) for r in rows.values()} == {("16", "1", "259")}  # demo: bytes
    assert sorted(rows) == sorted([("branch", e, t) for e in ("1", "4") for t in ("20480", "40960", "61440")]
                                  + [("control", "4", "40960")])
    # Same seeds and data order: the control (one trapezoidal run) equals trunk + branch bitwise on CPU.
    assert rows[("control", "4", "40960")]["loss"] == rows[("branch", "4", "40960")]["loss"]
    results = {r.id: r.result for r in Registry.open(smoke).runs("done")}
    runs = load_runs(smoke / "runs.csv", "chinchilla")
    assert list(runs.loss) == [results[f"d16_E{e}_T{t}"]["loss"] for e in (1, 4) for t in (20480, 40960, 61440)] + [
        results["d16_E4_T40960_control"]["loss"]]
    fit = json.loads(_cli("fit", smoke / "runs.csv", "--law", "chinchilla", "--grid", "small", "--json", "--quiet").stdout)
    assert fit["n_train"] == 7
    assert fit["shape_rule"] == {"head_dim": 16, "vocab": 259}  # d16 with 1 layer, byte vocabulary
    assert fit["fitted_range"]["d_model"] == [16, 16] and fit["fitted_range"]["experts"] == [1]  # a Chinchilla fit
    assert fit["fitted_range"]["n_act"] == [min(runs.n_act), max(runs.n_act)]
    c = fit["coefficients"]  # the reported RMSE is that of these coefficients on exactly our runs
    predicted = c["C"] + c["A"] / runs.n_act ** c["alpha"] + c["B"] / runs.tokens ** c["beta"]
    assert fit["rmse_train"] == pytest.approx(float(np.sqrt(np.mean((np.log(predicted) - np.log(runs.loss)) ** 2))), rel=1e-6)


def test_reuse_report_measures_the_analytic_token_ratio(smoke):
    report = json.loads(_cli("reuse-report", "--dir", smoke, "--json").stdout)
    budgets = (20480, 40960, 61440)
    analytic = (0.8 * max(budgets) + 0.2 * sum(budgets)) / sum(budgets)
    assert report["analytic_token_ratio"] == pytest.approx(analytic)
    assert report["measured_tokens"] == 2 * (0.8 * 61440 + 0.2 * sum(budgets))
    assert report["measured_token_ratio"] == pytest.approx(analytic)
    assert report["measured_wall_ratio"] > 0 and report["measured_step_ratio"] > 0  # timings: bench/reuse.py
    assert [(p["experts"], p["tokens"], p["gap"]) for p in report["pairs"]] == [(4, 40960, 0.0)]
    assert Path(report["plot"]).stat().st_size > 10_000


def test_status_and_rescan_rebuild_the_registry_from_workdirs(smoke, tmp_path):
    import shutil

    out = _cli("sweep", "status", "--dir", smoke).stdout
    assert "all         9/9" in out and "ETA done" in out
    copy = tmp_path / "sweep"
    shutil.copytree(smoke, copy, symlinks=True)
    (copy / "sweep.sqlite").unlink()
    out = _cli("sweep", "status", "--dir", copy, "--rescan").stdout  # workdirs are the truth
    assert "rescanned the workdirs: 0 pending, 0 running, 9 done, 0 failed" in out


def _micro_grid(tmp_path, budgets: tuple) -> Path:
    """The smoke grid's d16 E=1 runs only, logging and checkpointing every step (slower, same numbers)."""
    text = (ROOT / "configs" / "grids" / "smoke.py").read_text()
    for old, new in {"grid.experts = (1, 4)": "grid.experts = (1,)",
                     "grid.budgets = (20480, 40960, 61440)": f"grid.budgets = {budgets!r}",
                     "grid.controls = ((\"d16\", 4, 40960),)": "grid.controls = ()",
                     '"checkpoint_every": 10': '"checkpoint_every": 1', '"log_every": 4': '"log_every": 1'}.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "micro.py"
    path.write_text(text)
    return path


def test_branches_start_while_their_trunk_trains(smoke, tmp_path):
    sweep = tmp_path / "sweep"
    _cli("sweep", "plan", "--grid", _micro_grid(tmp_path, (20480, 40960, 61440)), "--dir", sweep)
    log = _cli("sweep", "run", "--dir", sweep, "--parallel", "2").stdout.splitlines()
    events = [" ".join(line.split()[:2]) for line in log]
    assert events.index("start d16_E1_T20480") < events.index("done d16_E1_trunk:")  # from its branch point at step 16
    _cli("sweep", "collect", "--dir", sweep, "--out", sweep / "runs.csv")
    assert _rows(sweep / "runs.csv") == {k: v for k, v in _rows(smoke / "runs.csv").items() if k[1] == "1"}


def _start_runner(sweep) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "moe_jax.cli", "sweep", "run", "--dir", str(sweep)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_rows(workdir: Path, rows: int, proc, timeout=600) -> None:
    """Wait until the run in `workdir` has logged `rows` train steps (then it is mid-run)."""
    deadline = time.time() + timeout
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and metrics.read_text().count('"train"') >= rows:
            return
        assert proc.poll() is None, "the sweep ended before the kill"
        time.sleep(0.02)
    raise AssertionError(f"{workdir} never logged {rows} steps")


def _train_pid(workdir: Path) -> int:
    """The pid of the `moe-jax train` process training `workdir`."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in argv and str(workdir).encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no train process for {workdir}")


def _kill_runner_mid_run(sweep, workdir, rows) -> None:
    runner = _start_runner(sweep)
    _wait_rows(workdir, rows, runner)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    assert not (workdir / "summary.json").exists()  # the kill landed mid-run


def test_sigkill_of_sweep_run_during_a_trunk_then_rerun_matches(smoke, tmp_path):
    sweep = tmp_path / "sweep"
    _cli("sweep", "plan", "--grid", _micro_grid(tmp_path, (61440,)), "--dir", sweep)
    trunk = sweep / "runs" / "d16_E1_trunk"
    _kill_runner_mid_run(sweep, trunk, rows=12)
    _cli("sweep", "run", "--dir", sweep)  # waits for the orphaned child to save, then resumes it
    _cli("sweep", "collect", "--dir", sweep, "--out", sweep / "runs.csv")
    assert _rows(sweep / "runs.csv") == {k: v for k, v in _rows(smoke / "runs.csv").items() if k == ("branch", "1", "61440")}
    log = (sweep / "logs" / "d16_E1_trunk.log").read_text()
    assert "resumed from step" in log and log.count("resumed from step") == 1


@pytest.mark.slow
def test_sigkill_during_trunk_and_branch_and_of_a_child_then_rerun_matches(smoke, tmp_path):
    sweep = tmp_path / "sweep"
    _cli("sweep", "plan", "--grid", _micro_grid(tmp_path, (40960, 61440)), "--dir", sweep)
    runs = sweep / "runs"
    _kill_runner_mid_run(sweep, runs / "d16_E1_trunk", rows=20)
    _kill_runner_mid_run(sweep, runs / "d16_E1_T40960", rows=2)  # 2 of the branch's 8 steps (33 … 40)
    runner = _start_runner(sweep)
    _wait_rows(runs / "d16_E1_T61440", 3, runner)  # 3 of 12 steps
    os.kill(_train_pid(runs / "d16_E1_T61440"), signal.SIGKILL)  # a child dies: the runner resumes it
    assert runner.wait(timeout=900) == 0
    _cli("sweep", "collect", "--dir", sweep, "--out", sweep / "runs.csv")
    expected = {k: v for k, v in _rows(smoke / "runs.csv").items() if k in {("branch", "1", "40960"), ("branch", "1", "61440")}}
    assert _rows(sweep / "runs.csv") == expected
    from moe_jax.sweep.registry import Registry

    attempts = {r.id: (r.attempts, r.failures) for r in Registry.open(sweep).runs()}
    assert attempts == {"d16_E1_trunk": (2, 0), "d16_E1_T40960": (2, 0), "d16_E1_T61440": (2, 0)}
