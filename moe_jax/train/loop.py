"""The training loop: build, resume, train by tokens with the batch ramp, evaluate, checkpoint, summarise.

    summary = train(config, workdir)   # config: ConfigDict with model, data, train sections

Re-running the same call on the same workdir resumes from the newest good checkpoint and ends with
the same parameters (bitwise on CPU) and metrics as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import signal
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moe_jax.errors import ConfigError, UserError
from moe_jax.scaling import counting
from moe_jax.train import schedules
from moe_jax.train.branching import BranchPointSaver
from moe_jax.train.checkpointing import Checkpointer, restore_branch_point
from moe_jax.train import workdir as run_dir
from moe_jax.train.preflight import preflight, token_plan
from moe_jax.train.metrics import MetricsWriter, Progress
from moe_jax.train.optimizer import make_optimizer, peak_learning_rate
from moe_jax.train.steps import evaluate, init_train_state, make_eval_step, make_train_step

EXIT_PREEMPTED = 143  # 128 + SIGTERM: saved and stopped; re-run the same command to continue


class TrainingDiverged(UserError):
    """The loss became NaN/inf; good checkpoints are left untouched."""


class _Preemption:
    """Sets `.requested` on SIGTERM (TPU preemption notice) so the loop saves and stops cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to restore
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir, *, data_module=None, stream=None) -> dict:
    """Train (or resume) the run of `config` in `workdir`; returns the summary (also WORKDIR/summary.json).

    `data_module` replaces `moe_jax.data` (an object with get_vocabulary, make_train_iterator,
    make_eval_batches), for tests. Raises TrainingDiverged on a non-finite loss, UserError on bad input.
    On SIGTERM it saves and returns a summary with "preempted": True.
    """
    if data_module is None:
        import moe_jax.data as data_module
    from moe_jax.model import build_model, count_params, model_shape

    t_start = time.time()
    config, notes = preflight(config, data_module)  # every config check; nothing written yet
    workdir = run_dir.check_usable(workdir)
    run_dir.check_config_file(workdir, config)
    run_dir.claim(workdir, config)
    m, d, t = config.model, config.data, config.train

    counts = count_params(m)
    peak_lr = peak_learning_rate(t, counts["n_act"], m.experts)
    ramp = dict(final_batch=t.batch_size, ramp_tokens=tuple(t.batch_ramp_tokens), ramp_sizes=tuple(t.batch_ramp_sizes))
    total_steps, total_tokens = token_plan(config)
    sched = dict(peak_lr=peak_lr, total_tokens=float(total_tokens), warmup_tokens=float(t.warmup_tokens),
                 decay_fraction=float(t.decay_fraction), schedule=t.schedule)

    # Model and optimizer; arrays replicated over a 1-D data-parallel mesh of all devices.
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    optimizer = make_optimizer(t)
    graphdef, rest, state = init_train_state(build_model, m, t.seed, optimizer, sharding=replicated)
    train_step, eval_step = make_train_step(graphdef, rest, optimizer), make_eval_step(graphdef, rest)

    def put(batch):  # host-local numpy [b, S] → global arrays sharded over 'data'
        return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}

    data_iter = data_module.make_train_iterator(d, split="train", process_index=jax.process_index(),
                                                process_count=jax.process_count())
    ckpt = Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints, use_async=t.async_checkpoints)
    branch_saver = BranchPointSaver(config, workdir)  # trunk runs: state at each budget's branch point
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
    step, tokens, wall_before, last_eval = 0, 0, 0.0, {}
    restored = ckpt.restore_latest(abstract)
    branched = restored is None and bool(t.init_from)
    if branched:  # a new branch: the trunk's state, step, tokens and data position; this run's schedule
        restored = restore_branch_point(t.init_from, abstract)
        if restored[1]["tokens"] > total_tokens:
            raise ConfigError(f"train.init_from={t.init_from!r} is at {restored[1]['tokens']:,} tokens, past this "
                              f"run's {total_tokens:,}; branch from an earlier step")
    if restored is not None:
        state, meta = restored
        step, tokens, wall_before = int(meta["step"]), int(meta["tokens"]), float(meta["wall_time_s"])
        last_eval = meta.get("eval", {})
        data_iter.set_state(meta["data"])
    start_step = step  # > 0 when this process resumed (or branched): the summary says so
    metrics = MetricsWriter(workdir, resume_step=step, tensorboard=t.tensorboard)
    progress = Progress(total_steps, t.progress, stream=stream)
    for note in notes:
        progress.message(note)
    if restored is not None:
        source = t.init_from if branched else str(workdir)
        progress.message(f"{'branched' if branched else 'resumed'} from step {step} ({tokens:,} tokens) of {source}")
    eval_bs = t.eval_batch_size or t.batch_size
    eval_batches = [put(b) for b in data_module.make_eval_batches(
        d, eval_bs // jax.process_count(), t.eval_batches,
        process_index=jax.process_index(), process_count=jax.process_count())]  # each host its own share

    flops_per_token = 0.0
    peak = None
    if t.measure_mfu:
        from moe_jax.train.mfu import matmul_flops_per_token, matmul_peak

        flops_per_token = matmul_flops_per_token(model_shape(m), d.seq_len)
        peak = matmul_peak(m.compute_dtype) * jax.device_count()

    def meta_now():
        return {"tokens": int(tokens), "data": data_iter.get_state(), "eval": last_eval,
                "wall_time_s": wall_before + time.time() - t_start}

    def run_eval():
        result = evaluate(eval_step, state["params"], eval_batches)
        metrics.write(step, "eval", dict(result, tokens=tokens))
        progress.message(f"eval step {step}: loss {result['eval_loss']:.4f}")
        return result

    preempted = False
    window_t0, window_tokens = time.time(), 0
    try:
        with _Preemption() as preemption:
            while step < total_steps:
                batch_size = schedules.batch_size_at(tokens, **ramp)
                lr = schedules.learning_rate(tokens, **sched)
                batch = put(data_iter.next_batch(batch_size))
                new_state, out = train_step(state, batch, np.float32(lr))
                loss = float(out["loss"])
                if not math.isfinite(loss):
                    good = ckpt.steps()
                    raise TrainingDiverged(
                        f"loss is {loss} at step {step + 1} ({tokens:,} tokens seen, lr {lr:.3g}); stopped without "
                        f"saving. Last good checkpoint: {('step ' + str(good[-1])) if good else 'none'} in "
                        f"{ckpt.directory}. Lower train.learning_rate or model.init_scale, or check the data")
                state = new_state
                step += 1
                tokens += batch_size * d.seq_len
                window_tokens += batch_size * d.seq_len
                branch_saver.after_step(step, tokens, state, meta_now)
                if step % t.log_every == 0 or step == total_steps:
                    now = time.time()
                    tps = window_tokens / max(now - window_t0, 1e-9)
                    row = {k: float(v) for k, v in jax.device_get(out).items()}
                    row.update(lr=lr, tokens=tokens, batch_size=batch_size, tokens_per_s=tps)
                    if peak:
                        row["mfu"] = flops_per_token * tps / peak
                    metrics.write(step, "train", row)
                    progress.update(step, loss, tps)
                    window_t0, window_tokens = now, 0
                if step == total_steps or (t.eval_every and step % t.eval_every == 0):
                    last_eval = run_eval()
                periodic = step == total_steps or (t.checkpoint_every and step % t.checkpoint_every == 0)
                if periodic or preemption.requested:
                    ckpt.save(step, state, meta_now())
                if preemption.requested and step < total_steps:
                    progress.message(f"SIGTERM: saved step {step}; re-run the same command to resume")
                    preempted = True
                    break
            if step == total_steps and not last_eval:  # resumed a finished run saved before its eval
                last_eval = run_eval()
        ckpt.wait()
    finally:
        ckpt.close()
        metrics.close()
        progress.close()

    summary = {
        "n_act": counts["n_act"], "n_total": counts["n_total"], "n_router": counts["n_router"],
        "experts": m.experts, "top_k": m.top_k, "tokens": int(tokens), "steps": int(step),
        "start_step": int(start_step), "branched_from": t.init_from if branched else "",
        "flops": float(counting.training_flops(counts["n_act"], tokens)), "peak_lr": peak_lr,
        "final_eval_loss": last_eval.get("eval_loss"), "wall_time_s": wall_before + time.time() - t_start,
        "preempted": preempted, "config": json.loads(config.to_json_best_effort()),
    }
    if not preempted:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
