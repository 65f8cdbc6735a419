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
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.errors import ConfigError, UserError
from moe_jax.parallel.mesh import build_mesh, mesh_config, mesh_shape, resolve_token_groups
from moe_jax.parallel.rules import abstract_with_shardings, batch_sharding, state_shardings
from moe_jax.scaling import counting
from moe_jax.train import schedules
from moe_jax.train import workdir as run_dir
from moe_jax.train.branching import BranchPointSaver
from moe_jax.train.checkpointing import Checkpointer, restore_branch_point
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


@dataclass
class _Plan:
    """What a run computes, fixed before anything is built: sections, mesh sizes, counts, schedule."""

    config: object
    workdir: Path
    model: object  # config.model with token_groups resolved for the mesh
    mesh_sizes: dict
    counts: dict
    peak_lr: float
    ramp: dict
    sched: dict
    total_steps: int
    total_tokens: int
    notes: list  # printed once the progress display exists (e.g. a clamped warmup)


@dataclass
class _Position:
    """Where the run is: the train state and how far it got (restored from a checkpoint or fresh)."""

    state: object
    step: int = 0
    tokens: int = 0
    wall_before: float = 0.0
    last_eval: dict = field(default_factory=dict)


def _plan(config, workdir, data_module) -> _Plan:
    """Validate everything (before the workdir is written), then fix the schedule of the run."""
    from moe_jax.model import count_params

    config, notes = preflight(config, data_module)  # every config check; nothing written yet
    mesh_sizes = mesh_shape(_mesh_section(config), jax.device_count())
    m, t = config.model, config.train
    counts = count_params(m)
    peak_lr = peak_learning_rate(t, counts["n_act"], m.experts)
    ramp = dict(final_batch=t.batch_size, ramp_tokens=tuple(t.batch_ramp_tokens), ramp_sizes=tuple(t.batch_ramp_sizes))
    total_steps, total_tokens = token_plan(config)
    sched = dict(peak_lr=peak_lr, total_tokens=float(total_tokens), warmup_tokens=float(t.warmup_tokens),
                 decay_fraction=float(t.decay_fraction), schedule=t.schedule)
    workdir = run_dir.check_usable(workdir)
    run_dir.check_config_file(workdir, config)
    run_dir.claim(workdir, config, write=jax.process_index() == 0)  # one process writes config.json
    return _Plan(config, workdir, resolve_token_groups(m, mesh_sizes), mesh_sizes, counts, peak_lr, ramp, sched,
                 total_steps, total_tokens, notes)


def _mesh_section(config):
    return config.mesh if "mesh" in config else mesh_config()


class _Runner:
    """The built run: mesh, sharded state, jitted steps, data, checkpoints, metrics; trains from a position."""

    def __init__(self, plan: _Plan, data_module, stream):
        from moe_jax.model import build_model, model_shape

        self.plan, self.t_start = plan, time.time()
        d, t = plan.config.data, plan.config.train
        self.mesh = build_mesh(_mesh_section(plan.config))
        self.optimizer = make_optimizer(t)
        graphdef, rest, state = init_train_state(build_model, plan.model, t.seed, self.optimizer, mesh=self.mesh)
        self.sharding = state_shardings(state, self.mesh)
        self.train_step = make_train_step(graphdef, rest, self.optimizer, mesh=self.mesh,
                                          state_sharding=self.sharding, donate=True)
        self.eval_step = make_eval_step(graphdef, rest, mesh=self.mesh)
        self.batch_sharding = batch_sharding(self.mesh)
        self.position = _Position(state)
        process = dict(process_index=jax.process_index(), process_count=jax.process_count())
        self.data_iter = data_module.make_train_iterator(d, split="train", **process)
        eval_bs = t.eval_batch_size or t.batch_size
        self.eval_batches = [self.put(b) for b in data_module.make_eval_batches(
            d, eval_bs // jax.process_count(), t.eval_batches, **process)]  # each host its own share
        self.ckpt = Checkpointer(plan.workdir / "checkpoints", keep=t.keep_checkpoints, use_async=t.async_checkpoints)
        self.branch_saver = BranchPointSaver(plan.config, plan.workdir)  # trunks: state at each budget's branch point
        self.start_step, self.branched_from = 0, ""  # where this process started (> 0: restored a checkpoint)
        self.stream, self.metrics, self.progress = stream, None, None
        self.flops_per_token, self.peak = 0.0, None
        if t.measure_mfu:
            from moe_jax.train.mfu import matmul_flops_per_token, matmul_peak

            self.flops_per_token = matmul_flops_per_token(model_shape(plan.model), d.seq_len)
            self.peak = matmul_peak(plan.model.compute_dtype) * jax.device_count()

    def put(self, batch):
        """Host-local numpy [b, S] → global arrays split over data · fsdp · expert."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v)) for k, v in batch.items()}

    def restore(self) -> bool:
        """Continue from the newest good checkpoint (or branch from train.init_from); True when restored."""
        t, pos = self.plan.config.train, self.position
        abstract = abstract_with_shardings(pos.state, self.sharding)  # restored straight into this mesh's layout
        restored = self.ckpt.restore_latest(abstract)
        branched = restored is None and bool(t.init_from)
        if branched:  # a new branch: the trunk's state, step, tokens and data position; this run's schedule
            restored = restore_branch_point(t.init_from, abstract)
            if restored[1]["tokens"] > self.plan.total_tokens:
                raise ConfigError(f"train.init_from={t.init_from!r} is at {restored[1]['tokens']:,} tokens, past "
                                  f"this run's {self.plan.total_tokens:,}; branch from an earlier step")
        if restored is not None:
            state, meta = restored
            self.position = _Position(state, int(meta["step"]), int(meta["tokens"]), float(meta["wall_time_s"]),
                                      meta.get("eval", {}))
            self.data_iter.set_state(meta["data"])
        primary = jax.process_index() == 0  # one process writes metrics and progress for the whole run
        self.metrics = (MetricsWriter(self.plan.workdir, resume_step=self.position.step, tensorboard=t.tensorboard)
                        if primary else _NoMetrics())
        self.progress = Progress(self.plan.total_steps, t.progress if primary else "none", stream=self.stream)
        for note in self.plan.notes:
            self.progress.message(note)
        self.start_step, self.branched_from = self.position.step, (t.init_from if branched else "")
        if restored is not None:
            pos, source = self.position, t.init_from if branched else str(self.plan.workdir)
            self.progress.message(f"{'branched' if branched else 'resumed'} from step {pos.step} "
                                  f"({pos.tokens:,} tokens) of {source}")
        return restored is not None

    def meta_now(self) -> dict:
        pos = self.position
        return {"tokens": int(pos.tokens), "data": self.data_iter.get_state(), "eval": pos.last_eval,
                "wall_time_s": pos.wall_before + time.time() - self.t_start}

    def run_eval(self) -> dict:
        pos = self.position
        result = evaluate(self.eval_step, pos.state["params"], self.eval_batches)
        self.metrics.write(pos.step, "eval", dict(result, tokens=pos.tokens))
        self.progress.message(f"eval step {pos.step}: loss {result['eval_loss']:.4f}")
        return result

    def check_finite(self, guard, lr: float) -> None:
        """Raise TrainingDiverged if any step so far had a non-finite loss, gradient or parameter (one host sync)."""
        first_bad, loss = (x.item() for x in to_host(guard[1:]))
        if not first_bad:
            return
        good = self.ckpt.steps()
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradients or updated parameters are non-finite (loss {loss:.4g})"
        raise TrainingDiverged(
            f"{what} at step {first_bad} ({self.position.tokens:,} tokens seen by step {self.position.step}, "
            f"lr {lr:.3g}); stopped without saving. Last good checkpoint: "
            f"{('step ' + str(good[-1])) if good else 'none'} in {self.ckpt.directory}. "
            f"Lower train.learning_rate or model.init_scale, or check the data")

    def train_steps(self, preemption) -> bool:
        """Step until the end or a SIGTERM; returns True when preempted. Metrics leave the device every log_every."""
        plan, t, pos = self.plan, self.plan.config.train, self.position
        seq_len = plan.config.data.seq_len
        guard = _new_guard(pos.step)
        window_t0, window_tokens, lr = time.time(), 0, 0.0
        while pos.step < plan.total_steps:
            batch_size = schedules.batch_size_at(pos.tokens, **plan.ramp)
            lr = schedules.learning_rate(pos.tokens, **plan.sched)
            pos.state, out = self.train_step(pos.state, self.put(self.data_iter.next_batch(batch_size)), np.float32(lr))
            guard = _update_guard(guard, out["finite"], out["loss"])
            pos.step += 1
            pos.tokens += batch_size * seq_len
            window_tokens += batch_size * seq_len
            last = pos.step == plan.total_steps
            if pos.step % t.log_every == 0 or last:
                self.check_finite(guard, lr)
                now = time.time()
                tps = window_tokens / max(now - window_t0, 1e-9)
                self.log(out, lr, batch_size, tps)
                window_t0, window_tokens = now, 0
            evaluating = last or (t.eval_every and pos.step % t.eval_every == 0)
            saving = last or (t.checkpoint_every and pos.step % t.checkpoint_every == 0) or preemption.requested
            branch_point = pos.tokens in self.branch_saver.points
            if evaluating or saving or branch_point:
                self.check_finite(guard, lr)
            if branch_point:  # before the rolling save: a kill between the two re-saves nothing twice
                self.branch_saver.after_step(pos.step, pos.tokens, pos.state, self.meta_now)
            if evaluating:
                pos.last_eval = self.run_eval()
            if saving:
                self.ckpt.save(pos.step, pos.state, self.meta_now())
            if preemption.requested and not last:
                self.progress.message(f"SIGTERM: saved step {pos.step}; re-run the same command to resume")
                return True
        return False

    def log(self, out, lr: float, batch_size: int, tps: float) -> None:
        pos = self.position
        row = {k: float(v) for k, v in to_host(out).items() if k != "finite"}
        row.update(lr=lr, tokens=pos.tokens, batch_size=batch_size, tokens_per_s=tps)
        if self.peak:
            row["mfu"] = self.flops_per_token * tps / self.peak
        self.metrics.write(pos.step, "train", row)
        self.progress.update(pos.step, row["loss"], tps)

    def close(self) -> None:
        self.ckpt.close()
        for sink in (self.metrics, self.progress):
            if sink is not None:
                sink.close()


class _NoMetrics:
    """The metrics sink of processes other than 0."""

    def write(self, step: int, kind: str, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


def to_host(tree):
    """The loop's one device→host copy (NaN guard, step metrics); called at log, eval, save and branch-point steps."""
    return jax.device_get(tree)


@jax.jit
def _update_guard(guard, finite, loss):
    """(steps done, first non-finite step or 0, the loss at that step), accumulated on the device."""
    step, first_bad, bad_loss = guard
    step = step + 1
    new_bad = jnp.logical_and(first_bad == 0, jnp.logical_not(finite))
    return step, jnp.where(new_bad, step, first_bad), jnp.where(new_bad, loss, bad_loss)


def _new_guard(step: int):
    return jnp.int32(step), jnp.int32(0), jnp.float32(0.0)


def _summary(plan: _Plan, runner: _Runner, wall_time_s: float, preempted: bool) -> dict:
    m, counts, pos = plan.config.model, plan.counts, runner.position
    return {
        "n_act": counts["n_act"], "n_total": counts["n_total"], "n_router": counts["n_router"],
        "experts": m.experts, "top_k": m.top_k, "tokens": int(pos.tokens), "steps": int(pos.step),
        "start_step": int(runner.start_step), "branched_from": runner.branched_from,
        "flops": float(counting.training_flops(counts["n_act"], pos.tokens)), "peak_lr": plan.peak_lr,
        "final_eval_loss": pos.last_eval.get("eval_loss"), "wall_time_s": wall_time_s,
        "preempted": preempted, "config": json.loads(plan.config.to_json_best_effort()),
    }


def train(config, workdir, *, data_module=None, stream=None) -> dict:
    """Train (or resume) the run of `config` in `workdir`; returns the summary (also WORKDIR/summary.json).

    `data_module` replaces `moe_jax.data` (an object with get_vocabulary, make_train_iterator,
    make_eval_batches), for tests. Raises TrainingDiverged on a non-finite loss, gradient or parameter
    (nothing non-finite is ever saved), UserError on bad input. On SIGTERM it saves and returns a summary
    with "preempted": True. config.mesh (default: all devices data-parallel) shards the state and batch.
    """
    if data_module is None:
        import moe_jax.data as data_module

    plan = _plan(config, workdir, data_module)
    runner = _Runner(plan, data_module, stream)
    try:
        runner.restore()
        with _Preemption() as preemption:
            preempted = runner.train_steps(preemption)
        pos = runner.position
        if not preempted and pos.step == plan.total_steps and not pos.last_eval:
            pos.last_eval = runner.run_eval()  # resumed a finished run saved before its eval
        runner.ckpt.wait()
    finally:
        runner.close()
    pos = runner.position
    summary = _summary(plan, runner, pos.wall_before + time.time() - runner.t_start, preempted)
    if not preempted and jax.process_index() == 0:
        (plan.workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
