"""Checkpoint reuse: branch-point arithmetic under the batch ramp, trunk branch points, branches from them."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from moe_jax.errors import ConfigError, UserError
from moe_jax.train import branching, schedules
from moe_jax.train.checkpointing import load_state
from moe_jax.train.config import validate
from moe_jax.train.loop import train
from moe_jax.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import FakeData, tiny_config  # noqa: E402

RAMP = dict(seq_len=16, final_batch=8, ramp_tokens=(256.0,), ramp_sizes=(4,))  # tiny_config's ramp


def _brute_boundaries(limit, seq_len, final_batch, ramp_tokens, ramp_sizes):
    """Tokens seen after each step, by simulating the loop's batch choice (the reference)."""
    seen, out = 0, []
    while seen <= limit:
        seen += schedules.batch_size_at(seen, final_batch, ramp_tokens, ramp_sizes) * seq_len
        out.append(seen)
    return out


@pytest.mark.parametrize("ramp", [RAMP, dict(seq_len=16, final_batch=8, ramp_tokens=(250.0, 600.0), ramp_sizes=(2, 4)),
                                  dict(seq_len=7, final_batch=3, ramp_tokens=(), ramp_sizes=())])
def test_step_at_tokens_matches_simulated_ramp(ramp):
    bounds = _brute_boundaries(3000, **ramp)
    for tokens in range(0, 3000):
        expected = bounds.index(tokens) + 1 if tokens in bounds else (0 if tokens == 0 else None)
        assert schedules.step_at_tokens(tokens, **ramp) == expected, tokens
        below = [b for b in bounds if b <= tokens]
        assert schedules.boundary_at_or_below(tokens, **ramp) == (len(below), below[-1] if below else 0)


def test_branch_points_are_exact_steps_under_the_ramp():
    config = tiny_config(schedule="constant", steps=0, tokens=1024.0, branch_budgets=(1280.0, 640.0))
    # 4 steps of 64 tokens (ramp) then 128 per step: 512 tokens after step 6, 1024 after step 10.
    assert branching.branch_points(config) == [(640, 512, 6), (1280, 1024, 10)]


def test_off_step_budget_is_one_line_error_with_a_valid_suggestion():
    config = tiny_config(schedule="constant", steps=0, tokens=1024.0, branch_budgets=(1000.0,))
    with pytest.raises(ConfigError, match=r"budget 1000.*does not end a step.*use e\.g\. (\d+)") as info:
        validate(config, device_count=1)
    message = str(info.value)
    assert "\n" not in message
    suggested = int(message.rsplit(" ", 1)[1])
    good = tiny_config(schedule="constant", steps=0, tokens=float(suggested), branch_budgets=(float(suggested),))
    assert branching.branch_points(good)[0][0] == suggested and abs(suggested - 1000) <= 640


@pytest.mark.parametrize("overrides, match", [
    (dict(branch_budgets=(640.0,), warmup_tokens=600.0), r"inside the warmup \(600 tokens\)"),
    (dict(branch_budgets=(640.0,), schedule="trapezoidal"), r"schedule='constant'"),
    (dict(branch_budgets=(2560.0,), tokens=1024.0), r"past the trunk's train.tokens=1024"),
    (dict(branch_budgets=(-5.0,)), r"positive token counts"),
])
def test_bad_branch_budgets(overrides, match):
    base = dict(schedule="constant", steps=0, tokens=1024.0)
    with pytest.raises(ConfigError, match=match):
        validate(tiny_config(**{**base, **overrides}), device_count=1)


def _tree_digest(path: Path) -> dict:
    """{relative path: (sha256, mode)} of every file below `path`."""
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    """A constant-LR trunk to 1024 tokens with branch points for budgets 640 and 1280, keep-last-2 checkpoints."""
    workdir = tmp_path_factory.mktemp("trunk")
    config = tiny_config(schedule="constant", steps=0, tokens=1024.0, branch_budgets=(640.0, 1280.0),
                         checkpoint_every=1, keep_checkpoints=2)
    train(config, workdir, data_module=FakeData)
    return workdir


def test_trunk_keeps_read_only_branch_points_apart_from_rolling_checkpoints(trunk):
    assert branching.saved_points(trunk) == [512, 1024]
    assert sorted(int(p.name) for p in (trunk / "checkpoints").iterdir() if p.name.isdigit()) == [9, 10]
    point_files = [p for p in (trunk / "branch_points" / "512").rglob("*") if p.is_file()]
    assert point_files and not any(p.stat().st_mode & 0o222 for p in point_files)  # no write bits
    # The point holds the trunk's state after step 6, which a run stopped at step 6 also ends with.
    import json

    meta = json.loads((trunk / "branch_points" / "512" / "meta" / "metadata").read_text())
    assert (meta["step"], meta["tokens"]) == (6, 512)


def test_branch_from_point_equals_direct_run_and_leaves_trunk_untouched(trunk, tmp_path):
    before = _tree_digest(trunk)
    branch, direct = tmp_path / "branch", tmp_path / "direct"
    summary = train(tiny_config(steps=0, tokens=640.0, init_from=f"{trunk}@512"), branch, data_module=FakeData)
    train(tiny_config(steps=0, tokens=640.0), direct, data_module=FakeData)
    assert _tree_digest(trunk) == before
    assert summary["tokens"] == 640 and summary["steps"] == 7
    assert [r["step"] for r in read_metrics(branch, "train")] == [7]
    assert read_metrics(branch, "train")[0]["lr"] == pytest.approx(1e-2 * (640 - 512) / 128)  # decay from 512 to 640
    for a, b in zip(jax.tree.leaves(load_state(branch)[1]), jax.tree.leaves(load_state(direct)[1])):
        assert np.array_equal(a, b)


def test_branch_before_its_point_exists_fails_clearly(trunk, tmp_path):
    with pytest.raises(UserError, match=r"has not written this branch point yet \(written: \[512, 1024\]\)"):
        train(tiny_config(steps=0, tokens=1280.0, init_from=f"{trunk}@768"), tmp_path, data_module=FakeData)


@pytest.mark.parametrize("budget", [700, 1000, 3000, 5555])
def test_suggested_budget_is_the_nearest_valid_one(budget):
    bounds = set(_brute_boundaries(20_000, **RAMP))
    valid = [b for b in bounds if (0.8 * b).is_integer() and int(0.8 * b) in bounds]
    nearest = min(abs(b - budget) for b in valid)
    suggested = branching.suggest_budget(budget, 0.2, RAMP)
    assert suggested in valid and abs(suggested - budget) == nearest
