"""moe_jax.parallel: mesh config and validation, the rule table, token groups, expert parallelism on 8 CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from moe_jax.errors import ConfigError
from moe_jax.model import build_model, model_config
from moe_jax.parallel.expert_parallel import ragged_offsets
from moe_jax.parallel.mesh import AXES, mesh_config, mesh_shape, validate_mesh
from moe_jax.parallel.rules import logical_spec, state_shardings

jax.config.update("jax_default_matmul_precision", "highest")
TESTS = Path(__file__).resolve().parent


def child(*cases: str) -> dict:
    """tests/mesh_child.py on 8 simulated CPU devices (a fresh process: XLA_FLAGS must precede importing JAX)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(TESTS / "mesh_child.py"), "equality", *cases],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def abstract_mesh(**sizes):
    shape = tuple(sizes.get(a, 1) for a in AXES)
    return AbstractMesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))


# ---- mesh configuration -------------------------------------------------------------------------------

def test_mesh_sizes_resolve_the_rest_axis():
    assert mesh_shape(mesh_config(), 8) == dict(data=8, fsdp=1, expert=1, tensor=1)
    assert mesh_shape(mesh_config(data=2, expert=4), 8) == dict(data=2, fsdp=1, expert=4, tensor=1)
    assert mesh_shape(mesh_config(data=1, fsdp=-1, expert=4), 64) == dict(data=1, fsdp=16, expert=4, tensor=1)


@pytest.mark.parametrize("sizes, count, match", [
    (dict(data=2, expert=3), 8, r"mesh sizes data=2 × fsdp=1 × expert=3 × tensor=1 do not multiply to the 8 devices"),
    (dict(data=-1, expert=3), 8, r"data=-1 × fsdp=1 × expert=3 × tensor=1 do not multiply to the 8 devices"),
    (dict(data=-1, fsdp=-1), 8, "only one axis may be -1"),
    (dict(expert=0), 8, r"mesh.expert = 0 must be a positive integer or -1"),
])
def test_bad_mesh_sizes_are_one_line_errors(sizes, count, match):
    with pytest.raises(ConfigError, match=match) as info:
        mesh_shape(mesh_config(**sizes), count)
    assert "\n" not in str(info.value)


def _train_config(**mesh):
    from test_train_helpers import tiny_config

    config = tiny_config(experts=4, batch_size=8, batch_ramp_tokens=(), batch_ramp_sizes=(), eval_batch_size=0)
    config.mesh = mesh_config(**mesh)
    return config


@pytest.mark.parametrize("mesh, model, match", [
    (dict(data=2, expert=8), {}, r"model.experts = 4 is not divisible by mesh.expert = 8"),
    (dict(data=2, fsdp=2, expert=4), {"experts": 8}, r"batch size 8 is not divisible by the 16 devices the batch is split over"),
    (dict(data=4, tensor=4), {"token_groups": 6}, r"model.token_groups = 6 is not a multiple of the 4 devices"),
    (dict(data=3), {}, r"do not multiply to the 16 devices"),
])
def test_bad_mesh_for_model_or_batch_is_a_one_line_error_before_compiling(mesh, model, match):
    from moe_jax.train.config import validate

    sys.path.insert(0, str(TESTS))
    config = _train_config(**mesh)
    config.model.update(model)
    with pytest.raises(ConfigError, match=match) as info:
        validate(config, device_count=16)
    assert "\n" not in str(info.value)


def test_tensor_axis_does_not_split_the_batch():
    sys.path.insert(0, str(TESTS))
    config = _train_config(data=4, tensor=4)  # 8 sequences over 4 batch shards
    assert validate_mesh(config.mesh, config.model, [8], 16)["tensor"] == 4


# ---- the rule table -----------------------------------------------------------------------------------

def test_logical_axes_map_through_the_one_table():
    mesh = abstract_mesh(fsdp=2, expert=4, tensor=2)
    assert logical_spec(("layers", "exp", "embed", "mlp"), (2, 8, 32, 96), mesh) == P(None, "expert", "fsdp", "tensor")
    # Weights without experts are FSDP-sharded over fsdp and expert; a width 8 does not divide stays on fsdp.
    assert logical_spec(("embed", "heads", "kv"), (32, 2, 16), mesh) == P(("fsdp", "expert"), "tensor", None)
    assert logical_spec(("embed", "heads", "kv"), (12, 2, 16), mesh) == P("fsdp", "tensor", None)
    assert logical_spec(("vocab", "embed"), (259, 32), mesh) == P(None, ("fsdp", "expert"))  # 259 rows stay whole
    assert logical_spec(("batch", None, "embed"), (16, 8, 32), mesh) == P(("fsdp", "expert"), None, None)


def test_optimizer_state_is_sharded_like_the_params():
    from moe_jax.train.config import train_config
    from moe_jax.train.optimizer import make_optimizer

    cfg = model_config(vocab_size=64, d_model=32, n_layers=2, n_heads=2, head_dim=16, ffn_hidden=96, experts=4)
    opt = make_optimizer(train_config())
    _, params, _ = nnx.split(nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0))), nnx.Param, ...)
    state = {"params": params, "opt_state": jax.eval_shape(opt.init, params), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    sh = state_shardings(state, abstract_mesh(fsdp=2, expert=4))
    spec = lambda tree: [s.spec for s in jax.tree.leaves(tree)]  # noqa: E731
    adam = sh["opt_state"].inner_state[1][0]
    assert spec(adam.mu) == spec(adam.nu) == spec(sh["params"])
    assert P(None, "expert", "fsdp", None) in spec(sh["params"])  # expert weights [L, E, D, F]
    assert sh["rng"].spec == P() and adam.count.spec == P()


# ---- ragged all-to-all offsets ------------------------------------------------------------------------

def test_ragged_offsets_match_a_numpy_loop():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (4, 4))
    counts[1] = 0  # a device that sends nothing
    for me in range(4):
        inp, send, out, recv = (np.asarray(a) for a in ragged_offsets(jnp.asarray(counts), me))
        for j in range(4):
            assert inp[j] == sum(counts[me, :j]) and send[j] == counts[me, j]
            assert out[j] == sum(counts[i, j] for i in range(me))  # after the rows of lower senders
            assert recv[j] == counts[j, me]


# ---- token groups on one device -----------------------------------------------------------------------

def test_token_groups_give_each_group_its_own_capacity():
    """G groups of whole sequences == the one-group model run on each group's sequences separately."""
    cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, head_dim=16, ffn_hidden=96, experts=4,
               capacity_factor_train=0.5)
    grouped, single = build_model(model_config(token_groups=2, **cfg), nnx.Rngs(0)), build_model(model_config(**cfg), nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(0), (4, 16), 0, 64)
    run = lambda model, x: jax.jit(lambda s, x: nnx.merge(nnx.graphdef(model), s)(x)[0])(nnx.state(model), x)  # noqa: E731
    logits = run(grouped, x)
    per_group = jnp.concatenate([run(single, x[:2]), run(single, x[2:])])
    np.testing.assert_allclose(logits, per_group, rtol=1e-5, atol=1e-5)
    assert not np.allclose(run(single, x), per_group, atol=1e-3)  # capacity over all tokens drops others
    with pytest.raises(ConfigError, match="cannot form model.token_groups = 3"):
        run(build_model(model_config(token_groups=3, **cfg), nnx.Rngs(0)), x)


# ---- 8 simulated devices (subprocess) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def mesh_results():
    return child("capacity/data2_expert4", "capacity/fsdp8", "dropless/expert8", "ragged/data2_expert4",
                 "ragged_pallas/data2_expert4", "step/fsdp2_expert4", "one_group")


@pytest.mark.parametrize("case", ["capacity/data2_expert4", "capacity/fsdp8", "dropless/expert8"])
def test_sharded_loss_and_grads_equal_one_device_on_the_same_token_groups(mesh_results, case):
    r = mesh_results[case]
    assert r["loss_rel"] < 1e-5 and r["grads_rel"] < 1e-5, r
    assert r["dropped"] == r["dropped_single"]
    if "expert" in case:
        assert r["all_to_all"]  # tokens really travel to experts on other devices


def test_capacity_is_per_group_not_global(mesh_results):
    one, grouped = mesh_results["one_group"], mesh_results["capacity/data2_expert4"]
    assert grouped["dropped"] > one["dropped"] + 0.05  # 8 groups of 32 tokens drop more than one group of 256


@pytest.mark.parametrize("case", ["ragged/data2_expert4", "ragged_pallas/data2_expert4"])
def test_ragged_dropless_exchange_equals_one_device(mesh_results, case):
    """ragged_all_to_all (emulated on CPU) with ragged_dot or our Pallas gmm on each device's experts."""
    r = mesh_results[case]
    assert r["value_rel"] < 1e-5 and r["grads_rel"] < 1e-5, r


def test_sharded_donated_train_step_equals_one_device(mesh_results):
    """Loss, every gradient leaf (Adam's first moment after one step), the second moment and the updated
    parameters within 1e-5 relative. The per-leaf Adam update g / (|g| + eps) is held to 1e-4: where a
    gradient element is ~eps (1e-8) its last digits, which the reduction order moves, set the update."""
    r = mesh_results["step/fsdp2_expert4"]
    for key in ("loss_rel", "grad_norm_rel", "grads_rel", "second_moment_rel", "params_rel"):
        assert r[key] < 1e-5, (key, r[key])
    assert r["update_rel"] < 1e-4, r["update_rel"]


def test_sharded_train_step_frees_the_donated_state(mesh_results):
    """After the step on fsdp=2 × expert=4, every input buffer is deleted but the injected learning rate
    (a fresh scalar each step, aliased to no output); the undonated one-device step keeps them all."""
    r = mesh_results["step/fsdp2_expert4"]
    assert r["kept"] == ["['opt_state'].hyperparams['learning_rate']"]
    assert len(r["kept_single"]) > 40


@pytest.mark.slow
def test_all_four_meshes_and_a_tensor_mesh_equal_one_device():
    meshes = ("data2_expert4", "fsdp8", "expert8", "fsdp2_expert4", "data2_expert2_tensor2")
    results = child(*(f"capacity/{m}" for m in meshes), "step/data2_expert2_tensor2")
    for case, r in results.items():
        assert r["loss_rel"] < 1e-5 and r["grads_rel"] < 1e-5, (case, r)


# ---- training on a mesh, checkpoints across meshes ----------------------------------------------------

MESH_TRAIN = dict(batch_size=8, batch_ramp_tokens=(), batch_ramp_sizes=(), eval_batch_size=8, checkpoint_every=4,
                  keep_checkpoints=3, eval_every=0)
GROUPS = {"token_groups": 8}  # pinned, so every mesh (and one device) forms the same capacity groups


def train_child(workdir, mesh: dict, devices: int = 8, **extra) -> dict:
    spec = dict(devices=devices, mesh=mesh, model=GROUPS, train=MESH_TRAIN, workdir=str(workdir), **extra)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(TESTS / "mesh_train_child.py"), json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _params(workdir):
    from moe_jax.train.checkpointing import load_state

    return load_state(workdir)[1]["params"]


def _assert_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.linalg.norm(x - y) <= tol * max(np.linalg.norm(y), 1e-30)


def _rewind_to(src, dst, step: int):
    """A copy of workdir `src` as it was at checkpoint `step` (later checkpoints and the summary removed)."""
    import shutil

    shutil.copytree(src, dst)
    (dst / "summary.json").unlink()
    for p in (dst / "checkpoints").iterdir():
        if p.name.isdigit() and int(p.name) > step:
            shutil.rmtree(p)


def test_checkpoint_of_one_mesh_resumes_on_another_mesh_and_on_one_device(tmp_path):
    """data=2×expert=4 trains 12 steps; its step-8 checkpoint finishes on fsdp=2×expert=4 and on one device."""
    import sys as _sys

    _sys.path.insert(0, str(TESTS))
    from test_train_helpers import FakeData, tiny_config

    from moe_jax.train.loop import train

    ref = train_child(tmp_path / "ref", dict(data=2, expert=4))
    assert ref["steps"] == 12
    _rewind_to(tmp_path / "ref", tmp_path / "other_mesh", 8)
    other = train_child(tmp_path / "other_mesh", dict(data=1, fsdp=2, expert=4))
    _assert_close(_params(tmp_path / "other_mesh"), _params(tmp_path / "ref"))
    assert abs(other["final_eval_loss"] / ref["final_eval_loss"] - 1) < 1e-5
    _rewind_to(tmp_path / "ref", tmp_path / "one_device", 8)
    config = tiny_config(**MESH_TRAIN)
    config.model.update(GROUPS)
    config.mesh = mesh_config()
    single = train(config, tmp_path / "one_device", data_module=FakeData)
    _assert_close(_params(tmp_path / "one_device"), _params(tmp_path / "ref"))
    assert abs(single["final_eval_loss"] / ref["final_eval_loss"] - 1) < 1e-5


# ---- multi-host: 2 processes × 4 CPU devices on localhost ---------------------------------------------

def test_multi_host_start_is_asked_for_by_flags_or_a_tpu_vm_slice():
    from moe_jax.errors import UserError
    from moe_jax.parallel.distributed import initialize, on_multi_host_tpu_vm

    assert on_multi_host_tpu_vm({"TPU_WORKER_HOSTNAMES": "t1w0,t1w1"})
    assert not on_multi_host_tpu_vm({"TPU_WORKER_HOSTNAMES": "localhost"}) and not on_multi_host_tpu_vm({})
    assert initialize(env={}) is False  # nothing asked: a single-process run
    with pytest.raises(UserError, match="must be given together"):
        initialize("localhost:1234", None, 0, env={})
    with pytest.raises(UserError, match=r"--process-id 2 must be in \[0, 2\)"):
        initialize("localhost:1234", 2, 2, env={})


class _Initialized(Exception):
    """Raised by the stand-in jax.distributed.initialize: the run stops right after start-up."""


def test_train_multi_host_flag_lets_jax_detect_the_cluster_without_the_env_var(monkeypatch, tmp_path):
    import argparse

    import jax

    from moe_jax.errors import UserError
    from moe_jax.train import cli as train_cli

    calls = []

    def fake_initialize(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Initialized

    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)  # a queued-resource VM may not set it
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    base = ["--config", "tiny", "--workdir", str(tmp_path / "w")]
    with pytest.raises(_Initialized):
        train_cli.run(parser.parse_args([*base, "--multi-host"]), [])
    assert calls == [((), {})]  # no arguments: JAX's cluster detection (GCE TPU metadata, GKE) fills them in
    with pytest.raises(UserError, match="--multi-host lets JAX find the cluster itself"):
        train_cli.run(parser.parse_args([*base, "--multi-host", "--coordinator", "h:1", "--num-processes", "2",
                                         "--process-id", "0"]), [])
    assert len(calls) == 1

    def no_cluster():  # what jax.distributed.initialize() raises where no cluster is detected
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    with pytest.raises(UserError, match=r"--multi-host: JAX found no cluster to join \(coordinator_address"):
        train_cli.run(parser.parse_args([*base, "--multi-host"]), [])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_processes(workdir, n: int = 2, **extra) -> list:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    procs = []
    for i in range(n):
        spec = dict(devices=8 // n, mesh=dict(data=2, expert=4), model=GROUPS, train=MESH_TRAIN, workdir=str(workdir),
                    distributed=[f"localhost:{port}", n, i], **extra)
        procs.append(subprocess.Popen([sys.executable, str(TESTS / "mesh_train_child.py"), json.dumps(spec)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return procs


def _last_train_loss(workdir) -> float:
    from moe_jax.train.metrics import read_metrics

    return read_metrics(workdir, "train")[-1]["loss"]


@pytest.mark.slow
def test_two_processes_of_four_devices_equal_one_process_of_eight_and_resume_after_sigkill(tmp_path):
    import signal
    import time

    sys.path.insert(0, str(TESTS))
    from test_train_helpers import assert_resumed

    train_child(tmp_path / "one", dict(data=2, expert=4))
    procs = _start_processes(tmp_path / "two")
    for p in procs:
        _, err = p.communicate(timeout=1800)
        assert p.returncode == 0, err[-3000:]
    assert abs(_last_train_loss(tmp_path / "two") / _last_train_loss(tmp_path / "one") - 1) < 1e-5
    _assert_close(_params(tmp_path / "two"), _params(tmp_path / "one"))

    killed = tmp_path / "killed"
    procs = _start_processes(killed, delay_s=0.5)
    metrics, deadline = killed / "metrics.jsonl", time.time() + 900
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 6):
        time.sleep(0.1)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert 4 <= max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()) < 12
    for p in _start_processes(killed):
        _, err = p.communicate(timeout=1800)
        assert p.returncode == 0, err[-3000:]
    assert_resumed(json.loads((killed / "summary.json").read_text()))  # from the checkpoint, not step 0
    two = _params(tmp_path / "two")
    for x, y in zip(jax.tree.leaves(_params(killed)), jax.tree.leaves(two)):
        np.testing.assert_array_equal(x, y)  # resumed on the same topology: bitwise


@pytest.mark.slow
def test_moe_jax_train_runs_on_a_data_by_expert_mesh(tmp_path):
    """`moe-jax train --config.mesh.data=2 --config.mesh.expert=4` on 8 simulated devices, real data pipeline."""
    argv = ["train", "--config", str(TESTS.parent / "configs" / "tiny.py"), "--workdir", str(tmp_path / "run"),
            "--config.mesh.data=2", "--config.mesh.expert=4",
            "--config.data.task=fixture", f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.seq_len=32",
            "--config.data.builtin_vocab_size=2048", "--config.model.vocab_size=2048", "--config.model.d_model=32",
            "--config.model.n_layers=2", "--config.model.n_heads=2", "--config.model.head_dim=16",
            "--config.model.ffn_hidden=96", "--config.train.tokens=0", "--config.train.steps=4",
            "--config.train.batch_size=8", "--config.train.batch_ramp_tokens=()", "--config.train.batch_ramp_sizes=()",
            "--config.train.warmup_tokens=32", "--config.train.eval_batches=1", "--config.train.tensorboard=False",
            "--config.train.measure_mfu=False"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               XDG_CACHE_HOME=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "moe_jax.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and np.isfinite(summary["final_eval_loss"])
    assert summary["config"]["mesh"] == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
