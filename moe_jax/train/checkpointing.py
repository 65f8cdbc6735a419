"""Orbax checkpoints of the full training state with exact resume and corrupt-checkpoint fallback.

Layout: WORKDIR/checkpoints/<step>/{state, meta}. `state` is the array pytree (params, optimizer
state, RNG); `meta` is JSON: step, tokens seen, the data iterator's state, the latest eval, the
cumulative wall time and a per-leaf fingerprint (sum of each leaf) checked on restore, so a latest
checkpoint that is partial, unreadable or silently corrupted is skipped for the previous good one.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from moe_jax.errors import UserError
from moe_jax.paths import remove_tree, run_path

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


def stamped_meta(meta: dict, step: int, state) -> dict:
    """`meta` plus the step and the state's fingerprints, as every saved checkpoint carries them."""
    sums, magnitudes = fingerprint(state)
    return dict(meta, step=int(step), fingerprint=sums, fingerprint_abs=magnitudes)


def _fingerprint_matches(meta: dict, state) -> bool:
    sums, magnitudes = fingerprint(state)
    if "fingerprint_abs" not in meta:  # older checkpoints: exact sums
        return meta.get("fingerprint") == sums
    saved = np.asarray(meta.get("fingerprint"), np.float64)
    scale = np.asarray(meta["fingerprint_abs"], np.float64)
    return saved.shape == (len(sums),) and bool(np.all(np.abs(saved - sums) <= FINGERPRINT_RTOL * scale + 1e-30))


def _restore_checked(manager, step: int, abstract_state):
    """(state, meta) of one step, laid out by `abstract_state`'s shardings; ValueError when the fingerprint does not match."""
    quiet_stale_reads()  # before reading: a failed read's siblings may fail in the background before we catch it
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], dict(restored["meta"])
    if not _fingerprint_matches(meta, state):
        raise ValueError("fingerprint mismatch (checkpoint data is corrupted)")
    return state, meta


_STALE_READ_MARKERS = ("Event loop is closed", "_read_array_index_and_device_put", "Encountered error while reading array")


def short_reason(err: BaseException) -> str:
    """One short line for a failed restore: the error type and the start of its first line."""
    text = str(err).splitlines()[0] if str(err) else ""
    text = text.split(" See full TensorStore details")[0]
    return f"{type(err).__name__}: {text[:160]}"


def quiet_stale_reads() -> None:
    """Swallow the background errors of a checkpoint already judged unreadable.

    When one array of a corrupt checkpoint fails to read, Orbax abandons the restore while TensorStore
    is still reading the others; those reads finish later against a closed event loop and Python
    prints each failure as an "unraisable" traceback (thousands of lines). This hook drops exactly
    those (matched by message) and passes everything else to the previous hook. Idempotent.
    """
    previous = sys.unraisablehook
    if getattr(previous, "quiet_stale_reads", False):
        return

    def hook(unraisable):
        text = f"{unraisable.exc_value!r} {unraisable.object!r} {unraisable.err_msg!r}"
        if any(marker in text for marker in _STALE_READ_MARKERS):
            log.debug("ignored a background read error of a skipped checkpoint: %s", text[:200])
            return
        previous(unraisable)

    hook.quiet_stale_reads = True
    sys.unraisablehook = hook


def restore_branch_point(spec: str, abstract_state):
    """(state, meta) from another run's checkpoint, `WORKDIR[:STEP]` (default: its newest step), read-only.

    Used to start cooldown branches from a constant-LR trunk (SPEC §5 checkpoint reuse); the trunk's
    directory is never modified, so it may still be training. `TRUNK_WORKDIR@TOKENS` names one of the
    trunk's token-indexed branch points instead (moe_jax.train.branching).
    """
    from moe_jax.train import branching

    point = branching.parse_point_spec(spec)
    if point is not None:
        return branching.restore_point(*point, abstract_state)
    path, _, step_text = spec.partition(":")
    directory = run_path(path) / "checkpoints"
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
        self.directory = run_path(directory)
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
        meta = stamped_meta(meta, step, state)
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        """Block until pending async saves are committed."""
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest good checkpoint, or None when there is none.

        Unreadable/mismatching newer checkpoints are moved to WORKDIR/checkpoints_corrupt/ (the newest
        `keep` such copies are kept) with one warning line each, and the previous one is tried.
        """
        bad, result = [], None
        for step in reversed(self.steps()):
            try:
                result = _restore_checked(self._manager, step, abstract_state)
                break
            except Exception as err:  # any failure to read one checkpoint → fall back to an older one
                bad.append((step, short_reason(err)))
        if bad and result is None:
            # Nothing restorable at all: more likely changed code than corruption. Never discard them silently.
            raise UserError(f"none of the checkpoints {sorted(s for s, _ in bad)} in {self.directory} can be restored "
                            f"(newest: {bad[0][1]}); if they are from other code, use a new workdir")
        if not bad:  # the newest checkpoint was good: nothing moves and the manager stays open
            return result
        for (step, reason), dest in zip(bad, self._quarantine([s for s, _ in bad])):
            log.warning("checkpoint at step %d is unusable (%s); moved to %s, resuming from an older one",
                        step, reason, dest)
        return result

    def _quarantine(self, steps: list[int]) -> list[Path]:
        """Move `steps` out of the manager's directory; keep only the newest `keep` quarantined copies."""
        self._manager.wait_until_finished()
        self._manager.close()
        dest = self.directory.parent / f"{self.directory.name}_corrupt"
        dest.mkdir(exist_ok=True)
        moved = []
        for step in steps:
            target = dest / f"{step}-{time.time_ns()}"
            (self.directory / str(step)).rename(target)
            moved.append(target)
        copies = sorted(dest.iterdir(), key=lambda p: int(p.name.rpartition("-")[2]) if p.name.rpartition("-")[2].isdigit() else 0)
        for old in copies[: max(len(copies) - self.keep, 0)]:
            remove_tree(old)
        self._manager = self._open()
        return moved

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_state(workdir: str | Path, step: int | None = None) -> tuple[int, dict]:
    """(step, state as nested dicts of numpy arrays) of a run's checkpoint (default: the newest), for analysis.

    Works whatever mesh the run was saved from: every array is read onto this process's first device.
    """
    manager = ocp.CheckpointManager(
        run_path(workdir) / "checkpoints", options=ocp.CheckpointManagerOptions(read_only=True),
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
