"""Orbax checkpoints of the full training state with exact resume and corrupt-checkpoint fallback.

Layout: WORKDIR/checkpoints/<step>/{state, meta}. `state` is the array pytree (params, optimizer
state, RNG); `meta` is JSON: step, tokens seen, the data iterator's state, the latest eval, the
cumulative wall time and a per-leaf fingerprint (sum of each leaf) checked on restore, so a latest
checkpoint that is partial, unreadable or silently corrupted is skipped for the previous good one.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from moe_jax.errors import UserError

log = logging.getLogger(__name__)


@jax.jit
def _leaf_sums(tree):
    """Two float32 fingerprints per leaf, [2, num_leaves]: the sum of its values and the sum of their magnitudes."""
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((2, 0))
    return jnp.stack([jnp.stack([jnp.sum(x) for x in leaves]), jnp.stack([jnp.sum(jnp.abs(x)) for x in leaves])])


def fingerprint(tree) -> tuple[list[float], list[float]]:
    """(per-leaf sums, per-leaf sums of magnitudes) of a state pytree, as Python floats."""
    sums = np.asarray(_leaf_sums(tree))
    return [float(x) for x in sums[0]], [float(x) for x in sums[1]]


# Sums over differently sharded arrays (a checkpoint restored onto another mesh) add in another order;
# a corrupted or partial checkpoint moves a sum by far more than this share of the leaf's magnitude.
FINGERPRINT_RTOL = 1e-5


def _fingerprint_matches(meta: dict, state) -> bool:
    sums, magnitudes = fingerprint(state)
    if "fingerprint_abs" not in meta:  # older checkpoints: exact sums
        return meta.get("fingerprint") == sums
    saved = np.asarray(meta.get("fingerprint"), np.float64)
    scale = np.asarray(meta["fingerprint_abs"], np.float64)
    return saved.shape == (len(sums),) and bool(np.all(np.abs(saved - sums) <= FINGERPRINT_RTOL * scale + 1e-30))


def _restore_checked(manager, step: int, abstract_state):
    """(state, meta) of one step, laid out by `abstract_state`'s shardings; ValueError when the fingerprint does not match."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], dict(restored["meta"])
    if not _fingerprint_matches(meta, state):
        raise ValueError("fingerprint mismatch (checkpoint data is corrupted)")
    return state, meta


def restore_branch_point(spec: str, abstract_state):
    """(state, meta) from another run's checkpoint, `WORKDIR[:STEP]` (default: its newest step), read-only.

    Used to start cooldown branches from a constant-LR trunk (SPEC §5 checkpoint reuse); the trunk's
    directory is never modified, so it may still be training.
    """
    path, _, step_text = spec.partition(":")
    directory = Path(path).absolute() / "checkpoints"
    if not directory.is_dir() or (step_text and not step_text.isdigit()):
        raise UserError(f"train.init_from={spec!r}: expected WORKDIR[:STEP] of a run with checkpoints")
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        steps = sorted(manager.all_steps())
        step = int(step_text) if step_text else (steps[-1] if steps else None)
        if step not in steps:
            raise UserError(f"train.init_from={spec!r}: no checkpoint at step {step}; available: {steps}")
        try:
            return _restore_checked(manager, step, abstract_state)
        except Exception as err:
            raise UserError(f"train.init_from={spec!r}: cannot restore step {step} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    finally:
        manager.close()


class Checkpointer:
    """Save/restore the training state under `directory` with Orbax (async, keep-last-K)."""

    def __init__(self, directory: str | Path, *, keep: int = 3, use_async: bool = True):
        self.directory = Path(directory).absolute()
        self.keep, self.use_async = keep, use_async
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, enable_async_checkpointing=self.use_async, create=True,
            cleanup_tmp_directories=True)  # partial saves of a killed run are never listed, and get removed
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Start saving `state` (pytree of arrays) and `meta` (JSON-able) at `step`; returns before the write ends when async."""
        sums, magnitudes = fingerprint(state)
        meta = dict(meta, step=int(step), fingerprint=sums, fingerprint_abs=magnitudes)
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        """Block until pending async saves are committed."""
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest good checkpoint, or None when there is none.

        Unreadable/mismatching newer checkpoints are moved to WORKDIR/checkpoints_corrupt/ with a warning
        (so the steps they held can be saved again) and the previous one is tried.
        """
        bad, first_error = [], ""
        result = None
        for step in reversed(self.steps()):
            try:
                result = _restore_checked(self._manager, step, abstract_state)
                break
            except Exception as err:  # any failure to read one checkpoint → fall back to an older one
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                log.warning("checkpoint at step %d is unusable (%s); trying the previous one", step, reason)
                bad.append(step)
                first_error = first_error or reason
        if bad and result is None:
            # Nothing restorable at all: more likely changed code than corruption. Never discard them silently.
            raise UserError(f"none of the checkpoints {sorted(bad)} in {self.directory} can be restored (newest: "
                            f"{first_error}); if they are from other code, use a new workdir")
        if bad:
            self._quarantine(bad)
        return result

    def _quarantine(self, steps: list[int]) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        dest = self.directory.parent / f"{self.directory.name}_corrupt"
        dest.mkdir(exist_ok=True)
        for step in steps:
            src = self.directory / str(step)
            if src.exists():
                shutil.move(str(src), str(dest / f"{step}-{int(time.time())}"))
        self._manager = self._open()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_state(workdir: str | Path, step: int | None = None) -> tuple[int, dict]:
    """(step, state as nested dicts of numpy arrays) of a run's checkpoint (default: the newest), for analysis.

    Works whatever mesh the run was saved from: every array is read onto this process's first device.
    """
    manager = ocp.CheckpointManager(
        Path(workdir).absolute() / "checkpoints", options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              manager.item_metadata(step)["state"])
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return step, jax.tree.map(np.asarray, restored["state"])
    finally:
        manager.close()
