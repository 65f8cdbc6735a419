"""The `config.train` section (defaults = the paper's SPEC §5 recipe) and cross-section `validate(config)`."""

from __future__ import annotations

import math

import ml_collections

from moe_jax.errors import ConfigError
from moe_jax.scaling import constants
from moe_jax.train.schedules import SCHEDULES

PROGRESS_MODES = ("auto", "bar", "plain", "none")


def train_config(**overrides) -> ml_collections.ConfigDict:
    """Training hyper-parameters; keyword overrides replace defaults (unknown names → ConfigError)."""
    c = ml_collections.ConfigDict()
    c.steps = 0  # optimizer steps to run (0 = until train.tokens tokens are seen)
    c.tokens = 0.0  # token budget of the run (0 = whatever train.steps steps consume); the LR schedule spans it
    c.batch_size = 512  # global batch in sequences after the ramp-up (SPEC §5: 512 × 512 tokens)
    c.batch_ramp_tokens = (0.5e9, 1.0e9)  # ramp-up: batch_ramp_sizes[i] sequences until this many tokens seen
    c.batch_ramp_sizes = (128, 256)  # ramp-up batch sizes (same length as batch_ramp_tokens; () = no ramp)
    c.learning_rate = 0.0  # peak LR (0 = the paper's rule LR(N_act, E), SPEC §3)
    c.schedule = "trapezoidal"  # LR schedule by tokens: trapezoidal (WSD) | cosine | constant
    c.warmup_tokens = 130e6  # linear warmup length in tokens (SPEC §5: 130 M)
    c.decay_fraction = 0.2  # trapezoidal: linear decay to 0 over this last fraction of train.tokens
    c.adam_b1 = 0.9  # AdamW β1
    c.adam_b2 = 0.999  # AdamW β2
    c.adam_eps = 1e-8  # AdamW epsilon
    c.weight_decay = 0.1  # AdamW decoupled weight decay, applied to all parameters
    c.grad_clip = 0.1  # global-norm gradient clipping threshold
    c.seed = 0  # model-initialisation RNG seed (the data order has its own data.seed)
    c.branch_budgets = ()  # trunk only (schedule 'constant'): save a branch point at (1 - decay_fraction)·T for each token budget T
    c.init_from = ""  # start from another run's checkpoint, WORKDIR[:STEP] or a trunk's branch point TRUNK_WORKDIR@TOKENS ('' = from scratch): cooldown branches of a constant-LR trunk
    c.eval_every = 1000  # evaluate on the held-out split every N steps (0 = only at the end)
    c.eval_batches = 10  # held-out batches per evaluation
    c.eval_batch_size = 0  # sequences per held-out batch (0 = train.batch_size)
    c.checkpoint_every = 1000  # save a checkpoint every N steps (0 = only at the end / on SIGTERM)
    c.keep_checkpoints = 3  # keep the last K checkpoints
    c.async_checkpoints = True  # write checkpoints in the background while training continues
    c.log_every = 10  # write metrics (JSONL, TensorBoard, progress) every N steps
    c.tensorboard = True  # also write TensorBoard event files under WORKDIR/tb
    c.progress = "auto"  # progress display: auto (bar on a TTY, else plain lines) | bar | plain | none
    c.measure_mfu = True  # measure the CPU/accelerator matmul peak (cached) to report MFU
    for key, value in overrides.items():
        if key not in c:
            raise ConfigError(f"unknown train config field {key!r}; valid: {', '.join(sorted(c.keys()))}")
        c[key] = value
    return c


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate_train_config(t) -> None:
    """Check the train section alone; raise ConfigError naming the first bad field."""
    _need(isinstance(t.steps, int) and t.steps >= 0, f"train.steps must be an integer ≥ 0, got {t.steps!r}")
    _need(math.isfinite(t.tokens) and t.tokens >= 0, f"train.tokens must be ≥ 0, got {t.tokens!r}")
    _need(t.steps > 0 or t.tokens > 0, "set train.steps or train.tokens to a positive value (both are 0)")
    _need(isinstance(t.batch_size, int) and t.batch_size > 0, f"train.batch_size must be a positive integer, got {t.batch_size!r}")
    ramp_t, ramp_s = tuple(t.batch_ramp_tokens), tuple(t.batch_ramp_sizes)
    _need(len(ramp_t) == len(ramp_s), f"train.batch_ramp_tokens {ramp_t} and train.batch_ramp_sizes {ramp_s} must have the same length")
    _need(all(int(s) == s and s > 0 for s in ramp_s), f"train.batch_ramp_sizes must be positive integers, got {ramp_s}")
    _need(all(b > a for a, b in zip(ramp_t, ramp_t[1:])) and all(x > 0 for x in ramp_t),
          f"train.batch_ramp_tokens must be positive and increasing, got {ramp_t}")
    _need(math.isfinite(t.learning_rate) and t.learning_rate >= 0,
          f"train.learning_rate must be ≥ 0 (0 = the paper's LR rule), got {t.learning_rate!r}")
    _need(t.schedule in SCHEDULES, f"train.schedule must be one of {', '.join(SCHEDULES)}, got {t.schedule!r}")
    _need(t.warmup_tokens >= 0, f"train.warmup_tokens must be ≥ 0, got {t.warmup_tokens!r}")
    _need(0.0 <= t.decay_fraction <= 1.0, f"train.decay_fraction must be in [0, 1], got {t.decay_fraction!r}")
    _need(0.0 <= t.adam_b1 < 1.0 and 0.0 <= t.adam_b2 < 1.0, f"train.adam_b1/adam_b2 must be in [0, 1), got {t.adam_b1}, {t.adam_b2}")
    _need(t.adam_eps > 0, f"train.adam_eps must be > 0, got {t.adam_eps!r}")
    _need(t.weight_decay >= 0, f"train.weight_decay must be ≥ 0, got {t.weight_decay!r}")
    _need(t.grad_clip > 0, f"train.grad_clip must be > 0, got {t.grad_clip!r}")
    for name in ("eval_every", "checkpoint_every", "eval_batch_size"):
        _need(isinstance(t[name], int) and t[name] >= 0, f"train.{name} must be an integer ≥ 0, got {t[name]!r}")
    for name in ("eval_batches", "keep_checkpoints", "log_every"):
        _need(isinstance(t[name], int) and t[name] > 0, f"train.{name} must be a positive integer, got {t[name]!r}")
    _need(all(isinstance(b, (int, float)) and b > 0 for b in t.branch_budgets),
          f"train.branch_budgets must be positive token counts, got {tuple(t.branch_budgets)!r}")
    _need(t.progress in PROGRESS_MODES, f"train.progress must be one of {', '.join(PROGRESS_MODES)}, got {t.progress!r}")


def validate(config, *, device_count: int | None = None) -> None:
    """Cross-section checks of a full config (model, data, train, optional mesh) before anything compiles.

    `device_count` defaults to jax.device_count(). The vocabulary size is checked separately by
    `validate_vocab_size` once the vocabulary is loaded.
    """
    for section in ("model", "data", "train"):
        _need(section in config, f"config has no '{section}' section; a training config needs model, data and train")
    from moe_jax.data.config import validate_data_config
    from moe_jax.model.config import validate_model_config

    validate_model_config(config.model)
    validate_data_config(config.data)
    validate_train_config(config.train)
    m, t = config.model, config.train
    _need(m.d_model % m.n_heads == 0, f"model.d_model ({m.d_model}) is not divisible by model.n_heads ({m.n_heads})")
    from moe_jax.train.branching import branch_points

    branch_points(config)  # each branch point on a step boundary, after the warmup, within the trunk
    if device_count is None:
        import jax

        device_count = jax.device_count()
    from moe_jax.parallel.mesh import mesh_config, validate_mesh

    sizes = [t.batch_size, *t.batch_ramp_sizes] + ([t.eval_batch_size] if t.eval_batch_size else [])
    validate_mesh(config.mesh if "mesh" in config else mesh_config(), m, sizes, device_count)


def validate_vocab_size(config, vocabulary_size: int) -> None:
    """model.vocab_size must equal the data vocabulary's size: smaller cannot hold every id, larger would
    count embedding and head rows that no token uses in N_act (and so in the LR rule and the law)."""
    model_v = config.model.vocab_size
    _need(model_v >= vocabulary_size,
          f"model.vocab_size ({model_v}) is smaller than the data vocabulary ({vocabulary_size} "
          f"tokens); set --config.model.vocab_size={vocabulary_size}")
    if model_v == vocabulary_size:
        return
    source = f"data.vocab_path={config.data.vocab_path!r}" if config.data.vocab_path else \
        f"data.vocab_path='' (the committed SentencePiece model of {config.data.builtin_vocab_size})"
    fix = (f"set data.vocab_path to a GPT-2 BPE directory (encoder.json, vocab.bpe) for the paper's V = {model_v}, or "
           if model_v == constants.PAPER_VOCAB else "set ")
    raise ConfigError(f"model.vocab_size ({model_v}) exceeds the {vocabulary_size} tokens of {source}: its "
                      f"{model_v - vocabulary_size} unused rows would count in N_act; {fix}"
                      f"--config.model.vocab_size={vocabulary_size}")
