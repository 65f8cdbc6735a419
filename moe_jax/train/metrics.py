"""Metrics sinks: JSONL (one object per line), TensorBoard event files, and a progress display."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from moe_jax.paths import run_path, write_text_atomic


class MetricsWriter:
    """Appends `{"step": s, "kind": k, ...}` lines to WORKDIR/metrics.jsonl and scalars to WORKDIR/tb.

    On resume from step r, lines with step > r (written after the checkpoint the run restarts from)
    are dropped first, so the file of a killed-and-resumed run matches an uninterrupted one; the new
    event file starts with a restart marker that makes TensorBoard discard the older files' steps > r.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = run_path(workdir) / "metrics.jsonl"
        self._truncate_after(resume_step)
        self._file = self.path.open("a")  # in a bucket, each flush rewrites the object
        self._tb = EventFileWriter(run_path(workdir) / "tb") if tensorboard else None
        if self._tb is not None and resume_step > 0:
            self._tb.restart(resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write
            if row.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))

    def write(self, step: int, kind: str, values: dict) -> None:
        """Record scalar `values` at `step`; `kind` is 'train' or 'eval' (TensorBoard tag prefix)."""
        row = {"step": int(step), "kind": kind}
        row.update({k: _plain(v) for k, v in values.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            scalars = {f"{kind}/{k}": v for k, v in row.items() if k not in ("step", "kind") and isinstance(v, (int, float))}
            self._tb.scalars(int(step), scalars)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class EventFileWriter:
    """TensorBoard event files (TFRecords of `Event` protos) written with TensorFlow's protos only.

    tf.summary needs the separate `tensorboard` package for scalars; this writes the same format
    without it. One file per writer: DIR/events.out.tfevents.<time>.<host>.<pid>[.<n>].
    """

    def __init__(self, directory: Path):
        import socket

        import tensorflow as tf  # imported lazily: heavy
        from tensorflow.core.framework import summary_pb2
        from tensorflow.core.util import event_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        path, n = directory / name, 0
        while path.exists():  # a restart within the same second and process: never truncate a written file
            n += 1
            path = directory / f"{name}.{n}"
        self._writer = tf.io.TFRecordWriter(str(path))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def restart(self, step: int) -> None:
        """Mark a restart at `step`: TensorBoard purges earlier-written events with step >= `step`."""
        log = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, session_log=log))

    def scalars(self, step: int, values: dict) -> None:
        summary = self._summary_pb2.Summary(
            value=[self._summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._writer.close()


def read_events(directory) -> list[tuple[int, str, float]]:
    """(step, tag, value) of the scalars under `directory` as TensorBoard shows them, in file order.

    Files are read oldest first; a restart marker (SessionLog.START at step s) drops the scalars read
    so far with step >= s, as TensorBoard's orphaned-data purge does.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out = []
    for path in sorted(run_path(directory).glob("events.out.tfevents.*")):  # TensorBoard's order: by name
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                out = [row for row in out if row[0] < event.step]
            out.extend((event.step, v.tag, v.simple_value) for v in event.summary.value)
    return out


def _plain(v):
    """numpy/JAX scalars → Python floats/ints; non-finite floats kept as JSON-able strings."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(workdir: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """The rows of WORKDIR/metrics.jsonl, optionally only one kind."""
    rows = [json.loads(x) for x in (run_path(workdir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


class Progress:
    """A one-line progress bar on a TTY (mode 'bar' or 'auto'), plain log lines otherwise."""

    def __init__(self, total_steps: int, mode: str = "auto", stream=None):
        self.stream = stream or sys.stderr
        self.total = max(int(total_steps), 1)
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self._t0 = time.time()

    def update(self, step: int, loss: float, tokens_per_s: float, extra: str = "") -> None:
        if self.mode == "none":
            return
        text = f"step {step}/{self.total} loss {loss:.4f} {tokens_per_s:,.0f} tok/s{(' ' + extra) if extra else ''}"
        if self.mode == "bar":
            width = 24
            done = int(width * min(step / self.total, 1.0))
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {text}\033[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A standalone line (eval results, checkpoint notices) that does not clobber the bar."""
        if self.mode == "none":
            return
        self.stream.write(("\n" if self.mode == "bar" else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()
