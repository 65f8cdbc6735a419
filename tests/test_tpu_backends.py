"""The gcloud and xpk sweep backends under the sweep runner (SQLite registry, gs:// workdirs read through
`gcloud storage`), against the fake gcloud/xpk: pool scheduling, preemption and relaunch, the retry limit,
launcher restarts, the label guard, the sweep lock, --dry-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fakes.cloud import FakeCloud
from moe_jax.cli import main
from moe_jax.errors import UserError
from moe_jax.sweep.cli import plan_sweep
from moe_jax.sweep.files import CloudFiles
from moe_jax.sweep.grid import RunSpec
from moe_jax.sweep.registry import Registry
from moe_jax.sweep import runner as sweep_runner
from moe_jax.sweep.runner import run_sweep
from moe_jax.tpu.accelerators import parse_accelerator
from moe_jax.tpu.backends import GcloudBackend, XpkBackend, parse_workload_list, workload_name
from moe_jax.tpu.runner import Runner
from moe_jax.tpu.settings import Settings

ROOT = "gs://bkt/sweep"
SETTINGS = ('project = "p"\nzone = "us-west4-a"\naccelerator = "v5litepod-16"\ncapacity = "spot"\n'
            'bucket = "gs://bkt"\ncluster = "gke-tpu"\n')


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    return FakeCloud(tmp_path / "cloud", monkeypatch)


def summary(tokens: int, loss: float = 3.0) -> str:
    """A finished run's summary.json, as `moe-jax train` writes it (the fields the result reader uses)."""
    return json.dumps({"n_act": 1000, "n_total": 2000, "experts": 8, "tokens": tokens, "flops": 6e3 * tokens,
                       "final_eval_loss": loss, "wall_time_s": 10.0, "config": {"model": {"d_model": 16, "n_layers": 1}}})


def finished(run_id: str, tokens: int = 1000) -> dict:
    return {f"{ROOT}/{run_id}/summary.json": summary(tokens)}


def settings(**extra) -> Settings:
    return Settings(project="p", zone="us-west4-a", accelerator="v5litepod-16", runtime_version="v2-alpha-tpuv5-lite",
                    capacity="spot", bucket="gs://bkt", **extra)


def registry(tmp_path, *ids) -> Registry:
    """Independent runs r1, r2, … with gs:// workdirs."""
    runs = [RunSpec(i, "trunk", "d512", 8, 1000, 0, f"{ROOT}/{i}", "configs/paper.py:d512_E8",
                    {"train.tokens": 1e9}) for i in ids]
    return Registry.create(tmp_path / "sweep", runs, {"grid": "test", "runs_root": ROOT})


def wheel(tmp_path) -> str:
    path = tmp_path / "dist" / "moe_jax-0.1.0-py3-none-any.whl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"wheel")
    return str(path)


def gcloud_backend(tmp_path, pool=1) -> GcloudBackend:
    return GcloudBackend(settings(), parse_accelerator("v5litepod-16"), Runner(), "sw", pool, wheel(tmp_path))


def sweep(reg, backend, parallel=1) -> dict:
    return run_sweep(reg, backend, parallel=parallel, poll_s=0, say=lambda m: None, files=CloudFiles())


def verbs(cloud) -> list[str]:
    """'create sw-0', 'setup sw-0', 'start r1 on sw-0', 'delete sw-0' for the mutating gcloud calls."""
    out = []
    for argv in cloud.calls("gcloud"):
        words = [a for a in argv if not a.startswith("--")]
        if words[:3] == ["compute", "tpus", "queued-resources"] and words[3] in ("create", "delete"):
            out.append(f"{words[3]} {words[4]}")
        elif words[3:4] == ["scp"]:
            out.append(f"setup {words[5].split(':')[0]}")
        elif words[3:4] == ["ssh"] and "setsid" in argv[-1]:
            run = argv[-1].split("logs/")[1].split(".exit")[0]
            out.append(f"start {run} on {words[4]}")
    return out


def test_sweep_run_gcloud_schedules_trunks_before_their_branches(cloud, tmp_path, capsys):
    plan_sweep("smoke", str(tmp_path / "sw"), ROOT)
    reg = Registry.open(tmp_path / "sw")
    writes, probes = {}, {}
    for r in reg.runs():
        if r.spec.kind == "trunk":  # first probe: all branch points written; second: finished
            points = {f"{r.workdir}/branch_points/{t}/meta/metadata": '{"wall_time_s": 1.0}'
                      for dep in reg.runs() for _, t in dep.spec.deps if _ == r.id}
            writes[r.id], probes[r.id] = [points, {f"{r.workdir}/summary.json": summary(r.spec.budget)}], ["running", "0"]
        else:
            writes[r.id], probes[r.id] = [{f"{r.workdir}/summary.json": summary(r.spec.budget)}], ["0"]
    cloud.world(probes=probes, writes=writes)
    (tmp_path / "tpu.toml").write_text(SETTINGS)
    code = main(["sweep", "run", "--dir", str(tmp_path / "sw"), "--backend", "gcloud", "--settings",
                 str(tmp_path / "tpu.toml"), "--slices", "2", "--prefix", "sw", "--wheel", wheel(tmp_path),
                 "--poll-s", "0"])
    assert code == 0, capsys.readouterr()
    starts = [v.split()[1] for v in verbs(cloud) if v.startswith("start")]
    assert starts[:2] == ["d16_E1_trunk", "d16_E4_trunk"] and sorted(starts) == sorted(r.id for r in reg.runs())
    for r in reg.runs("done"):  # each branch started only after its trunk had written its branch point
        for dep, _ in r.spec.deps:
            assert starts.index(dep) < starts.index(r.id)
    assert reg.counts() == {"pending": 0, "running": 0, "done": 9, "failed": 0}
    assert verbs(cloud)[-2:] == ["delete sw-0", "delete sw-1"] and cloud.state()["queued"] == {}
    capsys.readouterr()
    assert main(["sweep", "status", "--dir", str(tmp_path / "sw"), "--rescan"]) == 0  # results read from gs://
    assert "rescanned the workdirs: 0 pending, 0 running, 9 done, 0 failed" in capsys.readouterr().out


def test_a_preempted_run_is_relaunched_from_its_last_checkpoint_on_a_new_slice(cloud, tmp_path):
    cloud.world(plans={"sw-0": [["ACTIVE", "ACTIVE", "ACTIVE", "SUSPENDED"], ["PROVISIONING", "ACTIVE"]]},
                probes={"r1": ["running", "running", "0"]}, writes={"r1": [{}, {}, finished("r1")]})
    reg = registry(tmp_path, "r1")
    assert sweep(reg, gcloud_backend(tmp_path))["done"] == 1
    assert verbs(cloud) == ["create sw-0", "setup sw-0", "start r1 on sw-0", "delete sw-0", "create sw-0",
                            "setup sw-0", "start r1 on sw-0", "delete sw-0"]
    starts = [argv[-1] for argv in cloud.calls("gcloud") if "setsid" in argv[-1]]
    assert starts[0] == starts[1] and "--workdir gs://bkt/sweep/r1 " in starts[0]  # same workdir: resumes there
    assert "moe-jax/venv/bin/moe-jax train --multi-host --config" in starts[0]  # JAX finds the other workers
    r1 = reg.get("r1")
    assert (r1.state, r1.attempts, r1.failures, r1.result["loss"]) == ("done", 2, 0, 3.0)


def test_a_run_that_keeps_failing_is_marked_failed_with_its_error_at_the_retry_limit(cloud, tmp_path):
    cloud.world(probes={"r1": ["running", "1"]})  # exits 1 every time, never writes summary.json
    reg = registry(tmp_path, "r1")
    reg.max_failures = 3
    assert sweep(reg, gcloud_backend(tmp_path))["failed"] == 1
    assert verbs(cloud).count("start r1 on sw-0") == 3
    r1 = reg.get("r1")
    assert (r1.state, r1.attempts, r1.failures) == ("failed", 3, 3)
    assert r1.error == "exit 1 on sw-0; see `moe-jax tpu logs sw-0`"
    assert cloud.state()["queued"] == {}  # the pool is given back


def test_a_slice_preempted_at_every_launch_ends_failed_at_the_attempt_limit_naming_the_slice(cloud, tmp_path):
    # each new sw-0: ACTIVE (start r1), ACTIVE (probe: running), then SUSPENDED (reclaimed) for good
    cloud.world(plans={"sw-0": [["ACTIVE", "ACTIVE", "SUSPENDED"]]}, probes={"r1": ["running"]})
    reg = registry(tmp_path, "r1")
    reg.max_attempts = 3
    assert sweep(reg, gcloud_backend(tmp_path))["failed"] == 1
    assert verbs(cloud) == ["create sw-0", "setup sw-0", "start r1 on sw-0", "delete sw-0"] * 3
    r1 = reg.get("r1")
    assert (r1.state, r1.attempts, r1.failures) == ("failed", 3, 0)  # preemptions are not failures
    assert r1.error == "its slice sw-0 was SUSPENDED (launched 3 times)"


def test_a_slice_deleted_from_outside_mid_run_is_a_preemption_and_the_run_resumes(cloud, tmp_path):
    cloud.world(probes={"r1": ["running", "0"]}, writes={"r1": [{}, finished("r1")]})
    backend = gcloud_backend(tmp_path)
    reg = registry(tmp_path, "r1")
    handle = backend.launch(reg.get("r1"))
    for _ in range(3):  # create, set up and start, probe: running
        assert backend.poll(handle) is None
    cloud.update(queued={})  # someone deletes the slice under the run
    ended = backend.poll(handle)
    assert (ended.code, ended.error) == (143, "its slice sw-0 disappeared")
    assert sweep(reg, backend)["done"] == 1  # relaunched on a fresh sw-0
    assert verbs(cloud) == ["create sw-0", "setup sw-0", "start r1 on sw-0", "create sw-0", "setup sw-0",
                            "start r1 on sw-0", "delete sw-0"]


class _LauncherDied(BaseException):
    """Stands for SIGKILL of the launcher: nothing in run_sweep cleans up."""


def test_a_restarted_launcher_neither_duplicates_nor_loses_runs(cloud, tmp_path, monkeypatch):
    cloud.world(probes={"r1": ["running", "running", "running", "0"], "r2": ["running", "0"]},
                writes={"r1": [{}, {}, {}, finished("r1")], "r2": [{}, finished("r2")]})
    reg = registry(tmp_path, "r1", "r2")
    polls = []

    def die_after_three_polls(_seconds):
        polls.append(1)
        if len(polls) == 3:  # create sw-0, set up and start r1, probe it: then the launcher dies
            raise _LauncherDied

    monkeypatch.setattr(sweep_runner.time, "sleep", die_after_three_polls)
    with pytest.raises(_LauncherDied):
        sweep(reg, gcloud_backend(tmp_path))
    assert verbs(cloud) == ["create sw-0", "setup sw-0", "start r1 on sw-0"]
    assert reg.get("r1").state == "running" and reg.get("r1").placement == "sw-0"
    monkeypatch.setattr(sweep_runner.time, "sleep", lambda s: None)
    counts = sweep(Registry.open(tmp_path / "sweep"), gcloud_backend(tmp_path))
    assert counts["done"] == 2
    assert verbs(cloud)[3:] == ["setup sw-0", "start r2 on sw-0", "delete sw-0"]  # r1 adopted, not started again
    assert [(r.id, r.attempts) for r in reg.runs("done")] == [("r1", 1), ("r2", 1)]


def test_sweep_run_killed_with_sigkill_then_run_again_neither_duplicates_nor_loses_runs(cloud, tmp_path):
    reg = registry(tmp_path, "r1", "r2")
    (tmp_path / "tpu.toml").write_text(SETTINGS)
    argv = ["sweep", "run", "--dir", str(reg.dir), "--backend", "gcloud", "--settings", str(tmp_path / "tpu.toml"),
            "--prefix", "sw", "--wheel", wheel(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    launcher = subprocess.Popen([sys.executable, "-m", "moe_jax.cli", *argv, "--poll-s", "0.1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while "start r1 on sw-0" not in verbs(cloud):  # r1 runs ("running" until told otherwise)
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    cloud.update(probes={"r1": ["running", "0"], "r2": ["0"]}, writes={"r1": [{}, finished("r1")], "r2": [finished("r2")]})
    assert main([*argv, "--poll-s", "0"]) == 0
    assert verbs(cloud).count("start r1 on sw-0") == 1 and verbs(cloud).count("start r2 on sw-0") == 1
    assert [(r.id, r.state, r.attempts) for r in reg.runs()] == [("r1", "done", 1), ("r2", "done", 1)]
    assert cloud.state()["queued"] == {}


LOCK_HOLDER = """
import sys
from moe_jax.sweep.runner import SweepLock
with SweepLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_launcher_process_on_the_same_sweep_refuses(cloud, tmp_path):
    reg = registry(tmp_path, "r1")
    (tmp_path / "tpu.toml").write_text(SETTINGS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(reg.dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "moe_jax.cli", "sweep", "run", "--dir", str(reg.dir),
                                 "--backend", "gcloud", "--settings", str(tmp_path / "tpu.toml"),
                                 "--wheel", wheel(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"another `moe-jax sweep run` (pid {holder.pid})" in second.stderr
        assert cloud.calls() == []  # refused before touching anything
    finally:
        holder.communicate("\n", timeout=60)
    assert reg.get("r1").state == "pending"


def test_dry_run_prints_the_next_launches_and_changes_nothing(cloud, tmp_path, capsys):
    reg = registry(tmp_path, "r1", "r2", "r3")
    (tmp_path / "tpu.toml").write_text(SETTINGS)
    argv = ["sweep", "run", "--dir", str(reg.dir), "--settings", str(tmp_path / "tpu.toml"), "--prefix", "sw",
            "--wheel", wheel(tmp_path), "--dry-run"]
    assert main([*argv, "--backend", "gcloud", "--slices", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[5] for line in lines if "queued-resources create" in line] == ["sw-0", "sw-1"]
    assert sum("setsid" in line for line in lines) == 2 and "--workdir gs://bkt/sweep/r2" in lines[-1]
    assert main([*argv, "--backend", "xpk"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[4] for line in lines] == [f"--workload=sw-{i}-1" for i in ("r1", "r2", "r3")]
    assert cloud.calls() == []
    assert reg.counts()["pending"] == 3 and all(r.attempts == 0 for r in reg.runs())


def test_sweep_run_on_a_cloud_backend_needs_gs_workdirs(cloud, tmp_path, capsys):
    plan_sweep("smoke", str(tmp_path / "sw"))  # local workdirs
    (tmp_path / "tpu.toml").write_text(SETTINGS)
    assert main(["sweep", "run", "--dir", str(tmp_path / "sw"), "--backend", "gcloud", "--settings",
                 str(tmp_path / "tpu.toml"), "--wheel", wheel(tmp_path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "run 'd16_E1_trunk' has the local workdir" in line and "--runs-root gs://BUCKET/PATH" in line
    assert cloud.calls() == []


def test_the_pool_never_touches_a_slice_it_did_not_create(cloud, tmp_path):
    cloud.world(queued={"sw-0": {"states": ["ACTIVE"], "labels": {"team": "prod"}}})
    with pytest.raises(UserError, match="'sw-0' is taken by a queued resource moe-jax did not create"):
        sweep(registry(tmp_path, "r1"), gcloud_backend(tmp_path))
    assert all(argv[3] == "describe" for argv in cloud.calls("gcloud"))
    assert "sw-0" in cloud.state()["queued"]


def test_a_slice_request_that_fails_is_replaced_without_counting_a_failure(cloud, tmp_path):
    cloud.world(plans={"sw-0": [["ACCEPTED", "FAILED"], ["PROVISIONING", "ACTIVE"]]},
                probes={"r1": ["0"]}, writes={"r1": [finished("r1")]})
    reg = registry(tmp_path, "r1")
    reg.max_failures = 1
    sweep(reg, gcloud_backend(tmp_path))
    assert verbs(cloud) == ["create sw-0", "delete sw-0", "create sw-0", "setup sw-0", "start r1 on sw-0",
                            "delete sw-0"]
    assert (reg.get("r1").state, reg.get("r1").attempts) == ("done", 1)


def test_a_run_recorded_on_a_slice_outside_the_pool_is_reported_not_forgotten(cloud, tmp_path):
    reg = registry(tmp_path, "r1")
    reg.mark_running("r1")
    reg.set_placement("r1", "old-7")
    with pytest.raises(UserError, match="'r1' is recorded as running on 'old-7', outside this pool"):
        sweep(reg, gcloud_backend(tmp_path))
    assert cloud.calls() == [] and reg.get("r1").state == "running"


def test_workload_names_follow_xpk_rules():
    assert workload_name("sw", "d512_E8", 1) == "sw-d512-e8-1"
    long = workload_name("sw", "x" * 60, 3)
    assert len(long) <= 40 and long.startswith("sw-") and long.endswith("-3")
    assert workload_name("sw", "x" * 60, 3) != workload_name("sw", "y" * 60, 3)


def test_parse_workload_list_reads_the_status_column():
    text = ("[XPK] Starting xpk\nJobset Name  Created Time  Priority  TPU VMs Needed  TPU VMs Running/Ran  "
            "TPU VMs Done  Status  Status Message  Status Time\n"
            "a-1  2026-01-01T00:00:00Z  medium  4  4  <none>  Admitted  Admitted by queue  2026-01-01T00:01:00Z\n"
            "b-2  2026-01-01T00:00:00Z  low  4  <none>  <none>  Evicted  Preempted to fit  2026-01-01T00:02:00Z\n")
    assert parse_workload_list(text) == {"a-1": "Admitted", "b-2": "Evicted"}
    assert parse_workload_list("[XPK] no workloads") == {}


def xpk_backend(tmp_path) -> XpkBackend:
    return XpkBackend(settings(cluster="gke-tpu"), parse_accelerator("v5litepod-16"), Runner(), "sw",
                      max_restarts=5, script_dir=os.path.dirname(wheel(tmp_path)))


def test_xpk_submits_workloads_and_relaunches_one_that_ended_without_a_summary(cloud, tmp_path):
    cloud.world(xpk_plans={"sw-r1-1": ["Admitted", "Evicted", "Admitted", "Finished"],
                           "sw-r1-2": ["Admitted", "Finished"]},
                writes={"sw-r1-2": [{}, finished("r1")]})
    reg = registry(tmp_path, "r1")
    assert sweep(reg, xpk_backend(tmp_path))["done"] == 1
    creates = [argv for argv in cloud.calls("xpk") if argv[1] == "create"]
    command = ('pip install -q moe_jax-0.1.0-py3-none-any.whl "jax[tpu]==0.10.2" && moe-jax train --multi-host '
               "--config configs/paper.py:d512_E8 --workdir gs://bkt/sweep/r1 --config.train.tokens=1000000000.0")
    assert creates[0] == ["workload", "create", "--cluster=gke-tpu", "--workload=sw-r1-1", "--tpu-type=v5litepod-16",
                          "--num-slices=1", "--max-restarts=5", "--project=p", "--zone=us-west4-a",
                          "--base-docker-image=python:3.11", f"--script-dir={tmp_path / 'dist'}",
                          f"--command={command}"]
    assert [c[3] for c in creates] == ["--workload=sw-r1-1", "--workload=sw-r1-2"]
    assert [argv[3] for argv in cloud.calls("xpk") if argv[1] == "delete"] == ["--workload=sw-r1-1", "--workload=sw-r1-2"]
    r1 = reg.get("r1")
    assert (r1.state, r1.attempts, r1.failures) == ("done", 2, 1)


def test_an_xpk_workload_in_failed_state_counts_a_failure_and_is_deleted(cloud, tmp_path):
    cloud.world(xpk_plans={"sw-r1-1": ["Admitted", "Failed"], "sw-r1-2": ["Admitted", "Failed"]})
    reg = registry(tmp_path, "r1")
    assert sweep(reg, xpk_backend(tmp_path))["failed"] == 1  # max_failures = 2
    assert [argv[3] for argv in cloud.calls("xpk") if argv[1] == "delete"] == ["--workload=sw-r1-1",
                                                                               "--workload=sw-r1-2"]
    r1 = reg.get("r1")
    assert (r1.state, r1.attempts, r1.failures) == ("failed", 2, 2)
    assert r1.error == "workload sw-r1-2 failed"
    assert cloud.state()["workloads"] == {}


def test_xpk_gives_up_at_the_retry_limit_and_adopts_a_live_workload(cloud, tmp_path):
    reg = registry(tmp_path, "r1", "r2")  # every workload finishes without summary.json
    reg.mark_running("r2")  # a dead launcher submitted r2's first workload; the cluster still runs it
    cloud.world(workloads={"sw-r2-1": {"statuses": ["Admitted", "Finished"]}}, writes={"sw-r2-1": [{}, finished("r2")]})
    sweep(reg, xpk_backend(tmp_path))
    assert [argv[3] for argv in cloud.calls("xpk") if argv[1] == "create"] == ["--workload=sw-r1-1", "--workload=sw-r1-2"]
    assert reg.get("r1").state == "failed" and "no complete summary.json" in reg.get("r1").error
    assert (reg.get("r2").state, reg.get("r2").attempts) == ("done", 1)


def test_xpk_uses_a_given_image_and_needs_a_cluster(cloud, tmp_path):
    backend = XpkBackend(settings(cluster="c", docker_image="gcr.io/p/moe:1"), parse_accelerator("v5litepod-16"),
                         Runner(), "sw")
    backend.launch(registry(tmp_path, "r1").get("r1"))
    [create] = [argv for argv in cloud.calls("xpk") if argv[1] == "create"]
    assert "--docker-image=gcr.io/p/moe:1" in create and \
        create[-1].startswith("--command=moe-jax train --multi-host --config")
    with pytest.raises(UserError, match="missing cluster"):
        XpkBackend(settings(), parse_accelerator("v5litepod-16"), Runner(), "sw")


def test_stopping_the_launcher_stops_started_runs_and_starts_no_more(cloud, tmp_path):
    cloud.world(plans={"sw-1": [["PROVISIONING"]]}, probes={"r1": ["running", "143"]})
    reg = registry(tmp_path, "r1", "r2")
    backend = gcloud_backend(tmp_path, pool=2)
    handles = [backend.launch(reg.get(i)) for i in ("r1", "r2")]
    for _ in range(3):  # r1: create, set up + start; r2's slice stays PROVISIONING
        assert [backend.poll(h) for h in handles] == [None, None]
    for handle in handles:
        backend.stop(handle)
    assert backend.poll(handles[1]).code == 143  # never started
    assert backend.poll(handles[0]).code == 143  # saved and stopped on SIGTERM
    assert verbs(cloud) == ["create sw-0", "create sw-1", "setup sw-0", "start r1 on sw-0"]
    assert sum("kill -TERM" in argv[-1] for argv in cloud.calls("gcloud")) == 1


def test_bad_sweep_run_flags_are_one_line_errors_and_run_nothing(cloud, tmp_path, capsys):
    reg = registry(tmp_path, "r1")
    (tmp_path / "tpu.toml").write_text(SETTINGS)
    base = ["sweep", "run", "--dir", str(reg.dir), "--settings", str(tmp_path / "tpu.toml"), "--wheel", wheel(tmp_path)]
    for extra, message in ((["--backend", "gcloud", "--slices", "0"], "--slices must be ≥ 1, got 0"),
                           (["--backend", "gcloud", "--prefix", "Bad_Name"], "bad --prefix 'Bad_Name'"),
                           (["--backend", "gcloud", "--max-failures", "0"], "--max-failures must be ≥ 1, got 0"),
                           (["--backend", "gcloud", "--accelerator", "v9-16"], "unknown accelerator type 'v9-16'"),
                           (["--backend", "xpk", "--settings", str(tmp_path / "none.toml")], "settings file not found")):
        assert main([*base, *extra]) == 2, extra
        [line] = capsys.readouterr().err.splitlines()
        assert message in line, (extra, line)
    (tmp_path / "tpu.toml").write_text(SETTINGS.replace('cluster = "gke-tpu"\n', ""))
    assert main([*base, "--backend", "xpk"]) == 2 and "missing cluster" in capsys.readouterr().err
    assert cloud.calls() == [] and reg.get("r1").state == "pending"


def test_a_sweep_whose_mesh_does_not_fill_the_slice_is_refused(cloud, tmp_path, capsys):
    runs = [RunSpec("r1", "trunk", "d512", 8, 1000, 0, f"{ROOT}/r1", "configs/paper.py:d512_E8",
                    {"mesh.fsdp": 4, "mesh.expert": 2})]
    reg = Registry.create(tmp_path / "sweep", runs, {"grid": "test", "runs_root": ROOT})
    (tmp_path / "tpu.toml").write_text(SETTINGS)
    assert main(["sweep", "run", "--dir", str(reg.dir), "--settings", str(tmp_path / "tpu.toml"), "--backend",
                 "gcloud", "--wheel", wheel(tmp_path), "--dry-run"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "run 'r1': mesh fsdp=4 x expert=2 needs 8 devices but v5litepod-16 has 16 chips" in line
    assert cloud.calls() == []
