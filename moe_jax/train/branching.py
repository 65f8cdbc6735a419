"""Checkpoint reuse across token budgets (SPEC §5): a constant-LR trunk saves branch points, branches start from them.

A trunk run sets `train.branch_budgets = (T1, T2, …)` and `train.schedule = 'constant'`; after the step at
which (1 − train.decay_fraction)·T tokens have been seen (under the batch ramp) it saves its full training
state to WORKDIR/branch_points/<tokens>/ — apart from the rolling checkpoints, never deleted by keep-last-K,
written once, then made read-only. A branch run sets `train.init_from = 'TRUNK_WORKDIR@TOKENS'` and
`train.tokens = T`: it starts from that state and decays linearly to 0 at T.

    points = branch_points(config)            # [(budget, point_tokens, point_step)], ConfigError if off-step
    saver = BranchPointSaver(config, workdir)  # in the loop: saver.after_step(step, tokens, state, meta_fn)
    state, meta = restore_point(trunk_workdir, tokens, abstract_state)
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from moe_jax.errors import ConfigError, UserError
from moe_jax.paths import is_remote, run_path
from moe_jax.train import schedules

POINTS_DIR = "branch_points"


def _ramp(config) -> dict:
    t = config.train
    return dict(seq_len=config.data.seq_len, final_batch=t.batch_size, ramp_tokens=tuple(t.batch_ramp_tokens),
                ramp_sizes=tuple(t.batch_ramp_sizes))


def point_tokens(budget: float, decay_fraction: float) -> float:
    """Tokens at which a branch for `budget` leaves the trunk: (1 − decay_fraction)·budget (an exact integer
    when it is one up to float rounding, e.g. 0.8 · 20480 = 16384)."""
    point = (1.0 - decay_fraction) * float(budget)
    nearest = float(round(point))
    return nearest if abs(point - nearest) <= 1e-9 * max(1.0, point) else point


def _on_step(tokens: float, ramp: dict) -> bool:
    return float(tokens).is_integer() and schedules.step_at_tokens(tokens, **ramp) is not None


def suggest_budget(budget: float, decay_fraction: float, ramp: dict) -> int:
    """The budget nearest `budget` for which both the branch point and the budget itself end a step."""
    batch = {k: v for k, v in ramp.items() if k != "seq_len"}
    down = schedules.boundary_at_or_below(budget, **ramp)[1]  # step ends ≤ budget, walking down
    up = down + schedules.batch_size_at(down, **batch) * ramp["seq_len"]  # step ends > budget, walking up
    for _ in range(200_000):  # merge both walks: candidates nearest `budget` first
        if down > 0 and budget - down <= up - budget:
            candidate, down = down, schedules.boundary_at_or_below(down - 1, **ramp)[1]
        else:
            candidate, up = up, up + schedules.batch_size_at(up, **batch) * ramp["seq_len"]
        if _on_step(point_tokens(candidate, decay_fraction), ramp):
            return int(candidate)
    raise ConfigError(f"no budget near {budget:g} tokens has its branch point on a step boundary; "
                      f"choose train.decay_fraction so that (1 − fraction)·budget is a multiple of the batch")


def branch_points(config) -> list[tuple[int, int, int]]:
    """[(budget, point tokens, point step)] of `config.train.branch_budgets`, sorted by budget.

    ConfigError (one line) when a point or budget does not end a step under the ramp (suggesting a budget
    that does), or a point falls inside the warmup or past the trunk's own `train.tokens`.
    """
    t = config.train
    budgets = tuple(t.branch_budgets)
    if not budgets:
        return []
    if t.schedule != "constant":
        raise ConfigError(f"train.branch_budgets needs a constant-LR trunk: set train.schedule='constant', "
                          f"not {t.schedule!r}")
    ramp, out = _ramp(config), []
    for budget in sorted(budgets):
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ConfigError(f"train.branch_budgets must be positive token counts, got {budget!r}")
        point = point_tokens(budget, t.decay_fraction)
        if point < t.warmup_tokens:
            raise ConfigError(f"budget {budget:g}: its branch point {point:g} tokens is inside the warmup "
                              f"({t.warmup_tokens:g} tokens); use budgets ≥ {t.warmup_tokens / (1 - t.decay_fraction):g}")
        if not (_on_step(budget, ramp) and _on_step(point, ramp)):
            raise ConfigError(
                f"budget {budget:g}: its branch point {point:g} tokens (1 − {t.decay_fraction:g} of it) or the budget "
                f"itself does not end a step of the batch ramp; use e.g. {suggest_budget(budget, t.decay_fraction, ramp)}")
        if t.tokens and point > t.tokens:
            raise ConfigError(f"budget {budget:g}: its branch point {point:g} tokens lies past the trunk's "
                              f"train.tokens={t.tokens:g}; train the trunk to at least {point:g} tokens")
        out.append((int(budget), int(point), schedules.step_at_tokens(point, **ramp)))
    return out


def points_dir(workdir) -> Path:
    return run_path(workdir) / POINTS_DIR


def saved_points(workdir) -> list[int]:
    """Token counts of the complete branch points in a trunk's workdir (in-progress saves are not listed)."""
    directory = points_dir(workdir)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "meta").exists())


def _make_read_only(path: Path) -> None:
    """Clear the write bits of every file below `path` (directories stay deletable by their owner).
    Local disks only: a bucket has no file modes (its objects are only written once here)."""
    if is_remote(path):
        return
    for root, _, files in os.walk(path):
        for name in files:
            f = Path(root) / name
            f.chmod(f.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class BranchPointSaver:
    """Saves the trunk's state at each branch point (synchronously, before that step's rolling checkpoint)."""

    def __init__(self, config, workdir):
        self.points = {point: step for _, point, step in branch_points(config)}
        self.directory = points_dir(workdir)

    def after_step(self, step: int, tokens: int, state, meta_fn) -> None:
        """Call once per step, after `tokens` (total seen) is updated; `meta_fn()` gives the checkpoint meta."""
        if tokens not in self.points or tokens in saved_points(self.directory.parent):
            return
        assert self.points[tokens] == step, (tokens, step, self.points[tokens])
        import orbax.checkpoint as ocp

        from moe_jax.train.checkpointing import stamped_meta

        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True,
                                               cleanup_tmp_directories=True)
        manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        try:
            meta = stamped_meta(meta_fn(), step, state)
            manager.save(int(tokens), args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
            manager.wait_until_finished()
        finally:
            manager.close()
        _make_read_only(self.directory / str(tokens))


def parse_point_spec(spec: str) -> tuple[str, int] | None:
    """'TRUNK_WORKDIR@TOKENS' → (workdir, tokens); None when `spec` names no branch point."""
    path, sep, tokens = spec.rpartition("@")
    if not sep:
        return None
    if not (path and tokens.isdigit()):
        raise UserError(f"train.init_from={spec!r}: expected TRUNK_WORKDIR@TOKENS (a branch point) or WORKDIR[:STEP]")
    return path, int(tokens)


def require_point(trunk_workdir: str, tokens: int) -> None:
    """UserError (one line) unless the trunk has written its branch point at `tokens`."""
    have = saved_points(trunk_workdir)
    if tokens not in have:
        raise UserError(f"train.init_from='{trunk_workdir}@{tokens}': the trunk has not written this branch point "
                        f"yet (written: {have or 'none'}); start the branch after the trunk passes {tokens:,} tokens")


def restore_point(trunk_workdir: str, tokens: int, abstract_state):
    """(state, meta) of the trunk's branch point at `tokens`, read-only; UserError if it is not written yet."""
    import orbax.checkpoint as ocp

    from moe_jax.train.checkpointing import _restore_checked

    spec = f"{trunk_workdir}@{tokens}"
    require_point(trunk_workdir, tokens)
    manager = ocp.CheckpointManager(points_dir(trunk_workdir), item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        return _restore_checked(manager, tokens, abstract_state)
    except Exception as err:  # noqa: BLE001 - any unreadable point becomes one line
        raise UserError(f"train.init_from={spec!r}: cannot restore the branch point ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    finally:
        manager.close()
