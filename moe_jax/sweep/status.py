"""`moe-jax sweep status`: progress of a sweep as a table (runs, tokens, FLOPs, ETA, failures)."""

from __future__ import annotations

import json
from pathlib import Path

from moe_jax.paths import is_remote
from moe_jax.sweep.grid import KINDS


def _tokens_so_far(record) -> int:
    """Tokens a run has trained itself: all of them when done, else what its metrics.jsonl shows."""
    spec = record.spec
    if record.state == "done":
        return spec.budget - spec.start_tokens
    if is_remote(spec.workdir):  # a running run in a bucket: counted when done (no slow GCS read per status)
        return 0
    path = Path(spec.workdir) / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            rows = [json.loads(ln) for ln in f.read().decode(errors="replace").splitlines()[1:] if ln.strip()]
    except (OSError, ValueError):
        return 0
    seen = [r["tokens"] for r in rows if r.get("kind") == "train" and "tokens" in r]
    return max(0, seen[-1] - spec.start_tokens) if seen else 0


def progress(registry) -> dict:
    """Per kind: runs done/total and tokens done/total (each run's own tokens), FLOPs done/total, ETA."""
    rows, total_flops, done_flops, wall = {}, 0.0, 0.0, 0.0
    for record in registry.runs():
        spec = record.spec
        row = rows.setdefault(spec.kind, {"runs": 0, "done": 0, "running": 0, "failed": 0, "tokens": 0, "tokens_done": 0})
        own, so_far = spec.budget - spec.start_tokens, _tokens_so_far(record)
        row["runs"] += 1
        row[record.state] = row.get(record.state, 0) + 1
        row["tokens"] += own
        row["tokens_done"] += so_far
        total_flops += 6.0 * spec.n_act * own
        done_flops += 6.0 * spec.n_act * so_far
        if record.state == "done" and record.result:
            wall += record.result["own_wall_time_s"]
    running = sum(r.get("running", 0) for r in rows.values())
    done_by_wall = sum(6.0 * r.spec.n_act * (r.spec.budget - r.spec.start_tokens) for r in registry.runs("done"))
    eta = None
    if wall > 0 and done_by_wall > 0:  # FLOPs per second of one process, times the runs in flight
        eta = (total_flops - done_flops) / (done_by_wall / wall) / max(1, running)
    return {"kinds": rows, "flops": total_flops, "flops_done": done_flops, "eta_s": eta}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no finished run yet)"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def format_status(registry) -> str:
    """The status table, then failures and runs blocked by them, each with its one-line error."""
    p = progress(registry)
    lines = [f"sweep {registry.dir}  ({registry.meta().get('grid', '?')} grid)",
             f"{'kind':<8} {'done':>9} {'running':>8} {'failed':>7} {'tokens done / total':>32}"]
    for kind in KINDS:
        r = p["kinds"].get(kind)
        if r:
            lines.append(f"{kind:<8} {r['done']:>4}/{r['runs']:<4} {r.get('running', 0):>8} {r.get('failed', 0):>7} "
                         f"{r['tokens_done']:>18,} / {r['tokens']:<18,}")
    total = {k: sum(r[k] for r in p["kinds"].values()) for k in ("runs", "done", "tokens", "tokens_done")}
    lines.append(f"{'all':<8} {total['done']:>4}/{total['runs']:<4} {'':>8} {'':>7} "
                 f"{total['tokens_done']:>18,} / {total['tokens']:<18,}")
    share = p["flops_done"] / p["flops"] if p["flops"] else 0.0
    lines.append(f"compute {share:.0%} of {p['flops']:.3g} FLOPs; ETA {_duration(p['eta_s']) if share < 1 else 'done'}")
    for record in registry.runs():
        if record.error and (record.state == "failed" or record.failures):
            label = "FAILED" if record.state == "failed" else f"retry ({record.failures} failure(s))"
            lines.append(f"{label} {record.id}: {record.error}")
    for run_id, dep in registry.blocked_by_failure().items():
        lines.append(f"blocked {run_id}: waits for failed {dep}")
    return "\n".join(lines)
