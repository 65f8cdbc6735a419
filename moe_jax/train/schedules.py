"""Learning-rate schedules by tokens seen (SPEC §5) and the batch-size ramp-up.

Everything here is plain Python on host scalars: the LR for a step is computed from the tokens seen
before that step and fed to the jitted step as an argument, so batch-size changes never re-trace it.
"""

from __future__ import annotations

import math

SCHEDULES = ("trapezoidal", "cosine", "constant")


def learning_rate(tokens_seen: float, *, peak_lr: float, total_tokens: float, warmup_tokens: float,
                  decay_fraction: float, schedule: str = "trapezoidal") -> float:
    """LR after `tokens_seen` tokens.

    trapezoidal: linear warmup 0→peak over `warmup_tokens`, constant, then linear decay to 0 over the
                 last `decay_fraction` of `total_tokens` (warmup-stable-decay).
    cosine:      linear warmup, then cosine from peak to 0 at `total_tokens`.
    constant:    linear warmup, then constant (a trunk for cooldown branches).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    t = float(tokens_seen)
    if warmup_tokens > 0 and t < warmup_tokens:
        return peak_lr * t / warmup_tokens
    if schedule == "constant":
        return peak_lr
    if schedule == "cosine":
        span = max(total_tokens - warmup_tokens, 1.0)
        frac = min(max((t - warmup_tokens) / span, 0.0), 1.0)
        return peak_lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    decay_start = total_tokens * (1.0 - decay_fraction)
    if t < decay_start:
        return peak_lr
    decay_len = max(total_tokens - decay_start, 1.0)
    return peak_lr * max(0.0, (total_tokens - t) / decay_len)


def batch_size_at(tokens_seen: float, final_batch: int, ramp_tokens=(), ramp_sizes=()) -> int:
    """Global batch (sequences) for the next step: ramp_sizes[i] until ramp_tokens[i] tokens, then final.

    The paper: 128 sequences until 0.5 B tokens, 256 until 1.0 B, then 512.
    """
    for limit, size in zip(ramp_tokens, ramp_sizes):
        if tokens_seen < limit:
            return int(size)
    return int(final_batch)


def plan_run(*, steps: int, tokens: float, seq_len: int, final_batch: int, ramp_tokens=(), ramp_sizes=()):
    """(total_steps, total_tokens) of a run given steps and/or a token budget, following the ramp.

    steps > 0 and tokens == 0: run `steps` steps; total tokens is what they consume.
    tokens > 0 and steps == 0: run until at least `tokens` tokens are seen.
    both > 0: stop at whichever comes first.
    """
    if steps <= 0 and tokens <= 0:
        raise ValueError("set train.steps or train.tokens (> 0)")
    n, seen = 0, 0
    while True:
        if steps > 0 and n >= steps:
            break
        if tokens > 0 and seen >= tokens:
            break
        seen += batch_size_at(seen, final_batch, ramp_tokens, ramp_sizes) * seq_len
        n += 1
    return n, seen



def _ramp_segments(seq_len: int, final_batch: int, ramp_tokens=(), ramp_sizes=()):
    """(first_step, tokens_before, tokens_per_step, tokens_end) of each constant-batch stretch of the ramp.

    Steps first_step+1, first_step+2, … each add tokens_per_step, from tokens_before while fewer than
    tokens_end tokens have been seen (the last stretch has tokens_end = inf).
    """
    step, seen = 0, 0
    for limit, size in [*zip(ramp_tokens, ramp_sizes), (math.inf, final_batch)]:
        per = int(size) * seq_len
        if seen >= limit:
            continue
        yield step, seen, per, limit
        if math.isinf(limit):
            return
        n = math.ceil((limit - seen) / per)
        step, seen = step + n, seen + n * per


def boundary_at_or_below(tokens: float, *, seq_len: int, final_batch: int, ramp_tokens=(), ramp_sizes=()):
    """(step, tokens seen) of the last step that ends at or before `tokens` under the ramp."""
    for step, seen, per, limit in _ramp_segments(seq_len, final_batch, ramp_tokens, ramp_sizes):
        n = math.ceil((limit - seen) / per) if not math.isinf(limit) else math.inf
        if tokens < seen + n * per:
            k = int((tokens - seen) // per)
            return step + k, seen + k * per
    raise AssertionError("unreachable: the last ramp segment is unbounded")


def step_at_tokens(tokens: float, *, seq_len: int, final_batch: int, ramp_tokens=(), ramp_sizes=()) -> int | None:
    """The step after which exactly `tokens` tokens have been seen under the ramp, or None if no step ends there."""
    step, seen = boundary_at_or_below(tokens, seq_len=seq_len, final_batch=final_batch,
                                      ramp_tokens=ramp_tokens, ramp_sizes=ramp_sizes)
    return step if seen == tokens else None
