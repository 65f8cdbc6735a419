"""A corrupt newest checkpoint: one warning line, quarantined (newest K copies kept), no background noise.

Runs the Checkpointer in child processes (no model: random arrays) so that stderr is exactly what a
user's terminal would show.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import types

import pytest

CHILD = textwrap.dedent("""
    import logging, sys
    import jax
    from moe_jax.train.checkpointing import Checkpointer
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", force=True)
    directory, mode, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state = {f"w{i}": jax.random.normal(jax.random.key(i), (256, 1024)) for i in range(12)}  # 12 MB
    ck = Checkpointer(directory, keep=2, use_async=False)
    if mode == "save":
        for step in (first, first + 1):
            ck.save(step, jax.tree.map(lambda x: x + step, state), {"tokens": step})
    else:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        _, meta = ck.restore_latest(abstract)
        print("restored", meta["step"])
    ck.close()
""")


def _child(tmp_path, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def _zero_a_block(directory, step: int) -> None:
    """Zero 64 KiB in the middle of the step's largest data file (a silently damaged disk block)."""
    files = sorted(glob.glob(f"{directory}/{step}/state/ocdbt.process_0/d/*"), key=os.path.getsize)
    data = bytearray(open(files[-1], "rb").read())
    data[len(data) // 3: len(data) // 3 + 65536] = bytes(65536)
    open(files[-1], "wb").write(data)


def _stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip() and "cuInit" not in line]


def test_corrupt_newest_checkpoint_gives_one_warning_line(tmp_path):
    ckpt = tmp_path / "checkpoints"
    assert _child(tmp_path, ckpt, "save", 1).returncode == 0
    _zero_a_block(ckpt, 2)
    proc = _child(tmp_path, ckpt, "quiet", 0)
    assert proc.returncode == 0 and proc.stdout.strip() == "restored 1", proc.stderr[-2000:]
    lines = _stderr_lines(proc)
    moved = list((tmp_path / "checkpoints_corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("2-")
    assert len(lines) == 1, "\n".join(lines[:20])
    assert lines[0].startswith("WARNING: checkpoint at step 2 is unusable (")
    assert str(moved[0]) in lines[0]


def test_quarantine_keeps_only_the_newest_copies(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for round_ in range(3):  # keep=2: the third quarantined copy evicts the first
        assert _child(tmp_path, ckpt, "save", 10 * round_ + 1).returncode == 0
        _zero_a_block(ckpt, 10 * round_ + 2)
        proc = _child(tmp_path, ckpt, "quiet", 0)
        assert proc.stdout.strip() == f"restored {10 * round_ + 1}", proc.stderr[-2000:]
    kept = sorted(p.name.split("-")[0] for p in (tmp_path / "checkpoints_corrupt").iterdir())
    assert kept == ["12", "22"]


def test_stale_read_errors_are_dropped_and_others_still_reported(monkeypatch):
    """Orbax's abandoned reads of a skipped checkpoint fail later as 'unraisable' errors (how many, and
    whether at all, depends on timing: up to thousands of traceback lines); the hook drops exactly those."""
    from moe_jax.train import checkpointing

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    checkpointing.quiet_stale_reads()
    checkpointing.quiet_stale_reads()  # idempotent: one filter, not two
    stale = [RuntimeError("Event loop is closed"),
             Exception("Encountered error while reading array index: (slice(0, 8, 1),)")]
    other = ValueError("a real problem")
    for err in [*stale, other]:
        sys.unraisablehook(types.SimpleNamespace(exc_type=type(err), exc_value=err, exc_traceback=None,
                                                 err_msg=None, object=None))
    assert seen == [other]


def test_clean_restore_moves_nothing_and_creates_no_quarantine(tmp_path):
    """A fresh directory and a good newest checkpoint: no checkpoints_corrupt/, and the manager keeps saving."""
    import jax
    import jax.numpy as jnp

    from moe_jax.train.checkpointing import Checkpointer

    state = {"w": jnp.arange(6.0).reshape(2, 3)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    ck = Checkpointer(tmp_path / "checkpoints", keep=2, use_async=False)
    assert ck.restore_latest(abstract) is None  # a new run
    for step in (1, 2):
        ck.save(step, jax.tree.map(lambda x: x + step, state), {"tokens": step})
    restored, meta = ck.restore_latest(abstract)
    assert meta["step"] == 2 and float(restored["w"][0, 0]) == 2.0
    ck.save(3, state, {"tokens": 3})
    assert ck.steps() == [2, 3]
    ck.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
