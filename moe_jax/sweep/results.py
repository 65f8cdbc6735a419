"""What a finished run produced (from its workdir) and the runs table `moe-jax fit` reads.

    result = read_result(record)       # None until WORKDIR/summary.json is complete (files=CloudFiles() for gs://)
    rows = collect_rows(registry)      # one row per done branch/control run
    write_csv(rows, "runs.csv")        # n_act, n_total, tokens, experts, loss, flops, d_model, n_layers, kind, run, vocab
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from moe_jax.errors import UserError
from moe_jax.paths import user_path
from moe_jax.sweep.files import LOCAL, join

# vocab last: columns added later go at the end so that readers of the older layout keep working.
CSV_COLUMNS = ("n_act", "n_total", "tokens", "experts", "loss", "flops", "d_model", "n_layers", "kind", "run", "vocab")
RESULT_COLUMNS = tuple(c for c in CSV_COLUMNS if c not in ("kind", "run"))
FIT_KINDS = ("branch", "control")  # trunks end at constant LR: not a point of the law


def _json(path: str, files) -> dict | None:
    try:
        return json.loads(files.read_text(path) or "")
    except ValueError:  # missing, or half-written by a killed run
        return None


def _start_wall_time(spec, files) -> float:
    """Wall time the run inherited from its branch point (0 for runs from scratch)."""
    if not spec.start_tokens:
        return 0.0
    trunk_dir = spec.overrides["train.init_from"].rpartition("@")[0]
    meta = _json(join(trunk_dir, "branch_points", str(spec.start_tokens), "meta", "metadata"), files)
    return float(meta["wall_time_s"]) if meta else 0.0


def train_seconds(workdir, start_tokens: int = 0, files=LOCAL) -> float:
    """Seconds spent in training steps, from metrics.jsonl (each logged window's tokens / its tokens per second)."""
    text = files.read_text(join(workdir, "metrics.jsonl")) or ""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    seconds, seen = 0.0, start_tokens
    for row in (r for r in rows if r.get("kind") == "train"):
        if row.get("tokens_per_s"):
            seconds += (row["tokens"] - seen) / row["tokens_per_s"]
        seen = row["tokens"]
    return seconds


def read_result(record, files=LOCAL) -> dict | None:
    """The run's result from WORKDIR/summary.json (read through `files`), or None while it has not finished."""
    summary = _json(join(record.workdir, "summary.json"), files)
    if not summary or summary.get("preempted") or summary.get("final_eval_loss") is None:
        return None
    spec, model = record.spec, summary["config"]["model"]
    return {
        "n_act": summary["n_act"], "n_total": summary["n_total"], "experts": summary["experts"],
        "tokens": summary["tokens"], "flops": summary["flops"], "loss": summary["final_eval_loss"],
        "d_model": model["d_model"], "n_layers": model["n_layers"], "vocab": model.get("vocab_size"),
        "own_tokens": summary["tokens"] - spec.start_tokens,  # tokens this run trained itself
        "own_wall_time_s": summary["wall_time_s"] - _start_wall_time(spec, files),  # incl. start-up, compile, eval
        "own_step_time_s": train_seconds(record.workdir, spec.start_tokens, files),  # training steps only
    }


def collect_rows(registry, kinds=FIT_KINDS) -> list[dict]:
    """Rows of the done runs of `kinds`, in plan order."""
    rows = []
    for record in registry.runs("done"):
        if record.spec.kind in kinds:
            r = record.result
            # .get: results recorded before a column existed leave its cell empty (vocab unknown).
            rows.append({**{k: r.get(k) for k in RESULT_COLUMNS}, "kind": record.spec.kind, "run": record.id})
    return rows


def write_csv(rows: list[dict], out) -> Path:
    """Write the rows (CSV_COLUMNS) to `out`; UserError when nothing is finished or the file cannot be written."""
    if not rows:
        raise UserError("no finished branch or control runs to collect yet; see `moe-jax sweep status`")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    out = user_path(out)  # a local file or gs://BUCKET/runs.csv
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table.getvalue())
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror}") from None
    return out
