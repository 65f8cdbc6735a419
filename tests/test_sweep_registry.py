"""Sweep grids, the SQLite registry and the runner's bookkeeping, with a fake backend (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moe_jax.configlib import load_config
from moe_jax.errors import ConfigError, UserError
from moe_jax.sweep.grid import expand, load_grid
from moe_jax.sweep.registry import MAX_FAILURES, Registry
from moe_jax.sweep.reuse import token_ratio
from moe_jax.sweep.runner import EXIT_PREEMPTED, Exit, SweepLock, run_sweep
from moe_jax.train.branching import branch_points

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "grids" / "smoke.py")


@pytest.fixture(scope="module")
def smoke_runs():
    return expand(load_grid(SMOKE), "/sweep/runs")


def _config_of(spec):
    args = spec.train_args()
    return load_config(args[1], args[4:])


def test_smoke_grid_expands_into_trunks_branches_and_a_control(smoke_runs):
    kinds = [r.kind for r in smoke_runs]
    assert kinds == ["trunk"] + ["branch"] * 3 + ["trunk"] + ["branch"] * 3 + ["control"]
    trunk = smoke_runs[0]
    assert trunk.id == "d16_E1_trunk" and trunk.workdir == "/sweep/runs/d16_E1_trunk"
    config = _config_of(trunk)  # the command line the runner uses reproduces the planned config
    assert (config.train.schedule, config.train.tokens, config.model.experts) == ("constant", 49152.0, 1)
    assert branch_points(config) == [(20480, 16384, 16), (40960, 32768, 32), (61440, 49152, 48)]
    branch = smoke_runs[2]
    config = _config_of(branch)
    assert branch.deps == (("d16_E1_trunk", 32768),) and branch.start_tokens == 32768
    assert (config.train.schedule, config.train.tokens, config.train.init_from) == (
        "trapezoidal", 40960.0, "/sweep/runs/d16_E1_trunk@32768")
    control = _config_of(smoke_runs[-1])
    assert (control.train.init_from, control.train.tokens, control.model.experts) == ("", 40960.0, 4)


def test_token_ratio_is_the_papers_formula(smoke_runs):
    budgets = (20480, 40960, 61440)
    expected = (0.8 * max(budgets) + 0.2 * sum(budgets)) / sum(budgets)
    assert token_ratio(smoke_runs)["ratio"] == pytest.approx(expected)
    # SPEC §5: the paper's 13 budgets train 220.7 B instead of 591.5 B tokens (0.373×).
    from moe_jax.scaling.constants import PAPER_TOKEN_BUDGETS_B as paper

    assert (0.8 * max(paper) + 0.2 * sum(paper)) / sum(paper) == pytest.approx(220.7 / 591.5, abs=1e-4)


def test_unknown_grid_is_one_line_error():
    with pytest.raises(ConfigError, match=r"unknown grid 'nope'.*built-in grid.*\.py file") as info:
        load_grid("nope")
    assert "\n" not in str(info.value)


def _user_grid(tmp_path, **changes) -> str:
    text = Path(SMOKE).read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "my_grid.py"
    path.write_text(text)
    return str(path)


def test_budget_smaller_than_warmup_is_one_line_error(tmp_path):
    grid = load_grid(_user_grid(tmp_path, **{"grid.budgets = (20480, 40960, 61440)": "grid.budgets = (2560, 40960)"}))
    with pytest.raises(ConfigError, match=r"d16_E1: budget 2560: its branch point 2048 tokens is inside the warmup") as info:
        expand(grid, str(tmp_path / "runs"))
    assert "\n" not in str(info.value)


def test_malformed_grid_is_one_line_error(tmp_path):
    path = _user_grid(tmp_path, **{'grid.shapes = {"d16": (16, 1, 1)}': 'grid.shapes = {"d16": (16, 1)}'})
    with pytest.raises(ConfigError, match=r"shapes must map names to \(d_model, n_layers, n_heads\)"):
        load_grid(path)


def test_off_step_budget_suggests_a_valid_one(tmp_path):
    grid = load_grid(_user_grid(tmp_path, **{"grid.budgets = (20480, 40960, 61440)": "grid.budgets = (20000, 40960)"}))
    with pytest.raises(ConfigError, match=r"budget 20000.*use e\.g\. 20480"):
        expand(grid, str(tmp_path / "runs"))


def _registry(tmp_path, runs) -> Registry:
    return Registry.create(tmp_path / "sweep", runs, {"grid": "smoke"})


def test_registry_orders_by_dependencies_and_rescans_and_recreates(tmp_path, smoke_runs):
    reg = _registry(tmp_path, smoke_runs)
    written = set()
    ready = [r.id for r in reg.ready(point_exists=lambda wd, tokens: (wd, tokens) in written)]
    assert ready == ["d16_E1_trunk", "d16_E4_trunk", "d16_E4_T40960_control"]
    written.add(("/sweep/runs/d16_E1_trunk", 16384))  # the trunk passed its first branch point: that branch may start
    assert "d16_E1_T20480" in [r.id for r in reg.ready(point_exists=lambda wd, t: (wd, t) in written)]
    reg.mark_running("d16_E1_trunk")
    reg.mark_done("d16_E1_trunk", {"loss": 3.0})
    assert {"d16_E1_T20480", "d16_E1_T40960", "d16_E1_T61440"} <= {r.id for r in reg.ready(lambda wd, t: False)}
    # Rescan: the workdirs are the truth (here: only the E=4 trunk has a result).
    counts = reg.rescan(lambda record: {"loss": 2.0} if record.id == "d16_E4_trunk" else None)
    assert counts == {"pending": 8, "running": 0, "done": 1, "failed": 0}
    assert reg.get("d16_E4_trunk").result == {"loss": 2.0} and reg.get("d16_E1_trunk").state == "pending"
    reg.close()
    (tmp_path / "sweep" / "sweep.sqlite").unlink()
    with pytest.raises(UserError, match=r"no sweep registry in .*sweep plan --grid NAME"):
        Registry.open(tmp_path / "sweep")
    again = Registry.open(tmp_path / "sweep", recreate=True)  # from plan.json
    assert [r.spec for r in again.runs()] == smoke_runs


def test_plan_refuses_an_existing_sweep_dir(tmp_path, smoke_runs):
    _registry(tmp_path, smoke_runs).close()
    with pytest.raises(UserError, match="already holds a sweep"):
        _registry(tmp_path, smoke_runs)


class FakeBackend:
    """Finishes each launched run on the next poll with a scripted exit code; records launches."""

    def __init__(self, codes: dict | None = None, orphans=()):
        self.codes, self.launched, self.orphans, self.max_active, self._active = dict(codes or {}), [], set(orphans), 0, set()

    def launch(self, record):
        self.launched.append(record.id)
        self._active.add(record.id)
        self.max_active = max(self.max_active, len(self._active))
        return record.id

    def poll(self, handle):
        self._active.discard(handle)
        codes = self.codes.get(handle, [0])
        code = codes.pop(0) if len(codes) > 1 else codes[0]
        if code == 0:
            run_dir = Path(self.registry.get(handle).workdir)
            run_dir.mkdir(parents=True, exist_ok=True)
        return Exit(code, "" if code == 0 else f"exit {code}: moe-jax train: error: boom in {handle}")

    def stop(self, handle):
        pass

    def adopt(self, record):
        return record.id if record.id in self.orphans else None


def _fake_results(monkeypatch, backend):
    """read_result → a result for every workdir the fake backend 'finished'."""
    import moe_jax.sweep.runner as runner

    monkeypatch.setattr(runner, "read_result", lambda record, files=None: {"loss": 1.0, "tokens": record.spec.budget, "own_wall_time_s": 1.0}
                        if Path(record.workdir).is_dir() else None)


def _local_runs(tmp_path, smoke_runs):
    from dataclasses import replace

    return [replace(r, workdir=str(tmp_path / "runs" / r.id),
                    deps=tuple((d, 0) for d, _ in r.deps)) for r in smoke_runs]  # deps: the trunk must finish


def test_runner_runs_everything_once_in_dependency_order(tmp_path, smoke_runs, monkeypatch):
    reg = _registry(tmp_path, _local_runs(tmp_path, smoke_runs))
    backend = FakeBackend()
    backend.registry = reg
    _fake_results(monkeypatch, backend)
    counts = run_sweep(reg, backend, parallel=2, poll_s=0, say=lambda m: None)
    assert counts == {"pending": 0, "running": 0, "done": 9, "failed": 0}
    assert sorted(backend.launched) == sorted(r.id for r in smoke_runs)  # each run launched exactly once
    assert backend.launched.index("d16_E1_trunk") < backend.launched.index("d16_E1_T20480")
    assert backend.max_active <= 2


def test_run_failing_twice_is_failed_with_its_error_and_blocks_its_branches(tmp_path, smoke_runs, monkeypatch):
    from moe_jax.sweep.status import format_status

    reg = _registry(tmp_path, _local_runs(tmp_path, smoke_runs))
    # A crash (exit 2, twice); a SIGKILLed branch; a branch preempted (SIGTERM: saved, 143) then Ctrl-C'd (130).
    backend = FakeBackend(codes={"d16_E4_trunk": [2], "d16_E1_T20480": [-9, 0], "d16_E1_T40960": [143, 130, 0]})
    backend.registry = reg
    _fake_results(monkeypatch, backend)
    counts = run_sweep(reg, backend, parallel=1, poll_s=0, say=lambda m: None)
    trunk = reg.get("d16_E4_trunk")
    assert (trunk.state, trunk.failures, trunk.attempts) == ("failed", MAX_FAILURES, 2)
    assert trunk.error == "exit 2: moe-jax train: error: boom in d16_E4_trunk"
    killed = reg.get("d16_E1_T20480")  # killed once: resumed, not a failure
    assert (killed.state, killed.attempts, killed.failures) == ("done", 2, 0)
    stopped = reg.get("d16_E1_T40960")
    assert (stopped.state, stopped.attempts, stopped.failures) == ("done", 3, 0)
    assert counts == {"pending": 3, "running": 0, "done": 5, "failed": 1}
    status = format_status(reg)
    assert "FAILED d16_E4_trunk: exit 2: moe-jax train: error: boom in d16_E4_trunk" in status
    assert "blocked d16_E4_T20480: waits for failed d16_E4_trunk" in status


def test_runs_left_running_by_a_dead_launcher_are_waited_for_or_resumed(tmp_path, smoke_runs, monkeypatch):
    reg = _registry(tmp_path, _local_runs(tmp_path, smoke_runs))
    reg.mark_running("d16_E1_trunk")  # its child still alive
    reg.mark_running("d16_E4_trunk")  # its child gone
    backend = FakeBackend(orphans={"d16_E1_trunk"})
    backend.registry = reg
    _fake_results(monkeypatch, backend)
    run_sweep(reg, backend, parallel=1, poll_s=0, say=lambda m: None)
    assert "d16_E1_trunk" not in backend.launched  # finished by the orphan, never launched twice
    assert backend.launched.count("d16_E4_trunk") == 1 and reg.get("d16_E4_trunk").attempts == 2


def test_second_launcher_refuses_clearly(tmp_path):
    with SweepLock(tmp_path):
        with pytest.raises(UserError, match=r"another `moe-jax sweep run` \(pid \d+\) is running on"):
            with SweepLock(tmp_path):
                pass
    with SweepLock(tmp_path):  # released with its holder: a stale lock never blocks
        pass


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "moe_jax.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_bad_inputs_are_one_line_errors(tmp_path, smoke_runs):
    out = _cli("sweep", "run", "--dir", str(tmp_path / "empty"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "no sweep registry in" in out.stderr and "Traceback" not in out.stderr
    out = _cli("sweep", "plan", "--grid", "nope", "--dir", str(tmp_path / "x"))
    assert out.returncode == 2 and "unknown grid 'nope'" in out.stderr and out.stderr.count("\n") == 1
    _registry(tmp_path, smoke_runs).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from moe_jax.sweep.runner import SweepLock
        with SweepLock({str(tmp_path / 'sweep')!r}):
            print('locked', flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = _cli("sweep", "run", "--dir", str(tmp_path / "sweep"))
        assert out.returncode == 2 and out.stderr.count("\n") == 1
        assert f"another `moe-jax sweep run` (pid {holder.pid}) is running" in out.stderr
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / "sweep" / "plan.json").read_text())["meta"] == {"grid": "smoke"}
