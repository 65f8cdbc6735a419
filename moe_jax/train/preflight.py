"""Every check a run's config must pass before its workdir is touched, and the run's token plan.

    config, notes = preflight(config, data_module)

Warmup policy: `train.warmup_tokens` is an absolute length (the paper's 130 M tokens at every
budget), because cooldown branches of one constant-LR trunk must share the trunk's warmup. A run too
short to hold it (a quick `--config.train.steps=30` check) gets a warmup of 5 % of its tokens instead,
announced in a note, rather than a refusal; the note is printed and the clamped value is what
WORKDIR/config.json records, so resuming with the same command is accepted.
"""

from __future__ import annotations

import json


from moe_jax.errors import ConfigError
from moe_jax.paths import run_path
from moe_jax.train import schedules
from moe_jax.train.branching import parse_point_spec, require_point
from moe_jax.train.config import validate, validate_vocab_size
from moe_jax.train.workdir import check_layers_stacked

SHORT_RUN_WARMUP_SHARE = 0.05  # warmup of a run too short for train.warmup_tokens, as a share of its tokens


def token_plan(config) -> tuple[int, int]:
    """(total_steps, total_tokens) of the run under the batch ramp."""
    t = config.train
    return schedules.plan_run(steps=t.steps, tokens=t.tokens, seq_len=config.data.seq_len, final_batch=t.batch_size,
                              ramp_tokens=tuple(t.batch_ramp_tokens), ramp_sizes=tuple(t.batch_ramp_sizes))


def warmup_room(train_cfg, total_tokens: float) -> float:
    """Tokens before the decay phase starts: the most a warmup can span."""
    decay = train_cfg.decay_fraction if train_cfg.schedule == "trapezoidal" else 0.0
    return total_tokens * (1.0 - decay)


def _clamp_warmup(config, total_tokens: int) -> str | None:
    """Shorten a warmup that does not fit the run (see module doc); returns the note, or None."""
    t = config.train
    room = warmup_room(t, total_tokens)
    if t.warmup_tokens <= room:
        return None
    new = min(SHORT_RUN_WARMUP_SHARE * total_tokens, room)
    note = (f"note: train.warmup_tokens={t.warmup_tokens:,.0f} does not fit before the decay of this "
            f"{total_tokens:,}-token run; warming up over {new:,.0f} tokens ({SHORT_RUN_WARMUP_SHARE:.0%} of the run)")
    t.warmup_tokens = float(new)
    return note


def _check_init_from(spec: str, total_tokens: int) -> None:
    """A branch source must be an existing checkpoint or branch point of another run, before this run's end."""
    point = parse_point_spec(spec)  # TRUNK@TOKENS: a trunk's branch point
    if point is not None:
        trunk, tokens = point
        if tokens > total_tokens:
            raise ConfigError(f"train.init_from={spec!r} is at {tokens:,} tokens, past this run's {total_tokens:,}; "
                              f"branch from an earlier point")
        require_point(trunk, tokens)
        check_layers_stacked(trunk, spec)
        return
    path, _, step = spec.partition(":")
    directory = run_path(path) / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"train.init_from={spec!r}: {path} holds no checkpoints/ directory; "
                          f"give WORKDIR[:STEP] of a run that has saved checkpoints")
    check_layers_stacked(path, spec)
    if step and not step.isdigit():
        raise ConfigError(f"train.init_from={spec!r}: STEP must be a non-negative integer, got {step!r}")
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    if step and int(step) not in steps:
        raise ConfigError(f"train.init_from={spec!r}: no checkpoint at step {step}; available: {steps}")
    chosen = int(step) if step else (steps[-1] if steps else None)
    try:
        tokens = json.loads((directory / str(chosen) / "meta" / "metadata").read_text())["tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # unreadable metadata: the restore itself reports it, with the step
    if tokens > total_tokens:
        raise ConfigError(f"train.init_from={spec!r} is at {tokens:,} tokens, past this run's {total_tokens:,}; "
                          f"branch from an earlier step")


def preflight(config, data_module) -> tuple[object, list[str]]:
    """(a checked copy of `config`, notes to print). Raises ConfigError/UserError; writes nothing."""
    config = config.copy_and_resolve_references()
    validate(config)
    validate_vocab_size(config, data_module.get_vocabulary(config.data).vocab_size)
    _, total_tokens = token_plan(config)
    notes = [n for n in [_clamp_warmup(config, total_tokens)] if n]
    if config.train.init_from:
        _check_init_from(config.train.init_from, total_tokens)
    return config, notes
