"""Sweep backends against the fake gcloud/xpk: pool scheduling, preemption and relaunch, retry limit,
launcher restarts, the label guard, the sweep lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fakes.cloud import FakeCloud
from moe_jax.errors import UserError
from moe_jax.tpu.accelerators import parse_accelerator
from moe_jax.tpu.backends import GcloudBackend, Run, SweepLock, XpkBackend, drive, parse_workload_list, workload_name
from moe_jax.tpu.json_registry import JsonRegistry
from moe_jax.tpu.runner import Runner
from moe_jax.tpu.settings import Settings

TRAIN = ["--config", "configs/paper.py:d512_E8", "--config.train.tokens=1e9"]
SUMMARY = "gs://b/sweep/{}/summary.json"


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    return FakeCloud(tmp_path / "cloud", monkeypatch)


def settings(**extra) -> Settings:
    return Settings(project="p", zone="us-west4-a", accelerator="v5litepod-16", runtime_version="v2-alpha-tpuv5-lite",
                    capacity="spot", bucket="gs://b", **extra)


def registry(tmp_path, *ids) -> JsonRegistry:
    return JsonRegistry.create(str(tmp_path / "sweep.json"), [Run(i, TRAIN, f"gs://b/sweep/{i}") for i in ids])


def gcloud_backend(tmp_path, pool=1, retries=3) -> GcloudBackend:
    wheel = tmp_path / "moe_jax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    return GcloudBackend(settings(), parse_accelerator("v5litepod-16"), Runner(), "sw", pool, str(wheel), retries)


def run_to_end(backend, reg, tmp_path, max_polls=40) -> None:
    """drive() without sleeping between polls; fails if the sweep does not end within `max_polls`."""
    polls = []

    def sleep(_seconds):
        polls.append(_seconds)
        assert len(polls) <= max_polls, "the sweep did not finish"

    drive(reg, backend, str(tmp_path / "sweep.lock"), poll_s=0, sleep=sleep)


def verbs(cloud) -> list[str]:
    """'create sw-0', 'ssh sw-0 start r1', … for the mutating gcloud calls."""
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


def test_pool_runs_each_ready_run_on_a_slice_and_gives_the_slices_back(cloud, tmp_path):
    cloud.world(plans={"sw-0": [["PROVISIONING", "ACTIVE"]], "sw-1": [["ACCEPTED", "PROVISIONING", "ACTIVE"]]},
                probes={"r1": ["running", "0"], "r2": ["0"], "r3": ["0"]},
                objects={SUMMARY.format(r): 1 for r in ("r1", "r2", "r3")})
    reg = registry(tmp_path, "r1", "r2", "r3")
    run_to_end(gcloud_backend(tmp_path, pool=2), reg, tmp_path)
    assert verbs(cloud) == ["create sw-0", "create sw-1", "setup sw-0", "start r1 on sw-0", "setup sw-1",
                            "start r2 on sw-1", "start r3 on sw-0", "delete sw-1", "delete sw-0"]
    assert [(r.id, r.attempts) for r in reg.runs("done")] == [("r1", 1), ("r2", 1), ("r3", 1)]
    assert cloud.state()["queued"] == {}


def test_a_preempted_run_is_relaunched_with_the_same_command_on_a_new_slice(cloud, tmp_path):
    cloud.world(plans={"sw-0": [["ACTIVE", "ACTIVE", "SUSPENDED"], ["PROVISIONING", "ACTIVE"]]},
                probes={"r1": ["running", "gone", "running", "0"]}, objects={SUMMARY.format("r1"): 2})
    reg = registry(tmp_path, "r1")
    run_to_end(gcloud_backend(tmp_path), reg, tmp_path)
    assert verbs(cloud) == ["create sw-0", "setup sw-0", "start r1 on sw-0", "delete sw-0", "create sw-0",
                            "setup sw-0", "start r1 on sw-0", "delete sw-0"]
    starts = [argv[-1] for argv in cloud.calls("gcloud") if "setsid" in argv[-1]]
    assert starts[0] == starts[1] and "--workdir gs://b/sweep/r1" in starts[0]  # same workdir: resumes
    assert reg.status("r1")["status"] == "done" and reg.status("r1")["attempts"] == 2


def test_a_run_that_keeps_failing_stops_at_the_retry_limit(cloud, tmp_path):
    cloud.world(probes={"r1": ["running", "1"]})  # exits 1 every time, never writes summary.json
    reg = registry(tmp_path, "r1")
    run_to_end(gcloud_backend(tmp_path, retries=2), reg, tmp_path)
    assert verbs(cloud).count("start r1 on sw-0") == 3  # the first launch and 2 relaunches
    failed = reg.status("r1")
    assert failed["status"] == "failed" and failed["attempts"] == 3 and "exit code 1" in failed["reason"]
    assert cloud.state()["queued"] == {}


def test_a_restarted_launcher_neither_duplicates_nor_loses_runs(cloud, tmp_path):
    cloud.world(probes={"r1": ["running", "running", "running", "0"], "r2": ["running", "0"]},
                objects={SUMMARY.format("r1"): 1, SUMMARY.format("r2"): 1})
    reg = registry(tmp_path, "r1", "r2")
    first = gcloud_backend(tmp_path, pool=1)
    for _ in range(3):  # create, start r1, probe: then the launcher dies
        first.step(reg)
    assert verbs(cloud) == ["create sw-0", "setup sw-0", "start r1 on sw-0"]
    run_to_end(gcloud_backend(tmp_path, pool=1), JsonRegistry(str(tmp_path / "sweep.json")), tmp_path)
    assert verbs(cloud)[3:] == ["setup sw-0", "start r2 on sw-0", "delete sw-0"]  # r1 not started again
    assert [r.id for r in reg.runs("done")] == ["r1", "r2"]


def test_the_pool_never_touches_a_slice_it_did_not_create(cloud, tmp_path):
    cloud.world(queued={"sw-0": {"states": ["ACTIVE"], "labels": {"team": "prod"}}})
    with pytest.raises(UserError, match="'sw-0' is taken by a queued resource moe-jax did not create"):
        gcloud_backend(tmp_path).step(registry(tmp_path, "r1"))
    assert all(argv[3] == "describe" for argv in cloud.calls("gcloud"))
    assert "sw-0" in cloud.state()["queued"]


LOCK_HOLDER = """
import sys
from moe_jax.tpu.backends import SweepLock
with SweepLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""
SECOND_LAUNCHER = """
import sys
from moe_jax.errors import UserError
from moe_jax.tpu.backends import GcloudBackend, drive
from moe_jax.tpu.accelerators import parse_accelerator
from moe_jax.tpu.json_registry import JsonRegistry
from moe_jax.tpu.runner import Runner
from moe_jax.tpu.settings import Settings
backend = GcloudBackend(Settings(project="p", zone="us-west4-a"), parse_accelerator("v5litepod-16"), Runner(),
                        "sw", 1, "wheel.whl")
try:
    drive(JsonRegistry(sys.argv[2]), backend, sys.argv[1], poll_s=0)
except UserError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
"""


def test_a_second_launcher_process_on_the_same_sweep_refuses(cloud, tmp_path):
    reg, lock = registry(tmp_path, "r1"), str(tmp_path / "sweep.lock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, lock], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-c", SECOND_LAUNCHER, lock, str(reg.path)], capture_output=True,
                                text=True, env=env, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"another launcher (pid {holder.pid})" in second.stderr
        assert cloud.calls() == []  # refused before touching anything
    finally:
        holder.communicate("\n", timeout=60)
    with SweepLock(lock):  # released when its holder exits
        pass


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


def xpk_backend(tmp_path, retries=2) -> XpkBackend:
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "moe_jax-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    return XpkBackend(settings(cluster="gke-tpu"), parse_accelerator("v5litepod-16"), Runner(), "sw",
                      max_restarts=5, max_retries=retries, script_dir=str(tmp_path / "stage"))


def test_xpk_submits_workloads_and_relaunches_one_that_ended_without_a_summary(cloud, tmp_path):
    cloud.world(xpk_plans={"sw-r1-1": ["Admitted", "Evicted", "Admitted", "Finished"],
                           "sw-r1-2": ["Admitted", "Finished"]},
                objects={SUMMARY.format("r1"): 2})
    reg = registry(tmp_path, "r1")
    run_to_end(xpk_backend(tmp_path), reg, tmp_path)
    creates = [argv for argv in cloud.calls("xpk") if argv[1] == "create"]
    command = ('pip install -q moe_jax-0.1.0-py3-none-any.whl "jax[tpu]==0.10.2" && moe-jax train --config '
               "configs/paper.py:d512_E8 --config.train.tokens=1e9 --workdir gs://b/sweep/r1")
    assert creates[0] == ["workload", "create", "--cluster=gke-tpu", "--workload=sw-r1-1", "--tpu-type=v5litepod-16",
                          "--num-slices=1", "--max-restarts=5", "--project=p", "--zone=us-west4-a",
                          "--base-docker-image=python:3.11", f"--script-dir={tmp_path / 'stage'}",
                          f"--command={command}"]
    assert [c[3] for c in creates] == ["--workload=sw-r1-1", "--workload=sw-r1-2"]
    deletes = [argv[3] for argv in cloud.calls("xpk") if argv[1] == "delete"]
    assert deletes == ["--workload=sw-r1-1", "--workload=sw-r1-2"]
    assert reg.status("r1")["status"] == "done" and reg.status("r1")["attempts"] == 2


def test_xpk_gives_up_at_the_retry_limit(cloud, tmp_path):
    reg = registry(tmp_path, "r1")  # every workload finishes without summary.json
    run_to_end(xpk_backend(tmp_path, retries=1), reg, tmp_path)
    assert sum(argv[1] == "create" for argv in cloud.calls("xpk")) == 2
    assert reg.status("r1")["status"] == "failed" and "without summary.json" in reg.status("r1")["reason"]


def test_xpk_uses_a_given_image_and_needs_a_cluster(cloud, tmp_path):
    backend = XpkBackend(settings(cluster="c", docker_image="gcr.io/p/moe:1"), parse_accelerator("v5litepod-16"),
                         Runner(), "sw")
    backend.step(registry(tmp_path, "r1"))
    [create] = [argv for argv in cloud.calls("xpk") if argv[1] == "create"]
    assert "--docker-image=gcr.io/p/moe:1" in create and create[-1].startswith("--command=moe-jax train --config")
    with pytest.raises(UserError, match="missing cluster"):
        XpkBackend(settings(), parse_accelerator("v5litepod-16"), Runner(), "sw")


def test_a_slice_request_that_fails_is_replaced_without_using_a_retry(cloud, tmp_path):
    cloud.world(plans={"sw-0": [["ACCEPTED", "FAILED"], ["PROVISIONING", "ACTIVE"]]},
                probes={"r1": ["0"]}, objects={SUMMARY.format("r1"): 1})
    reg = registry(tmp_path, "r1")
    run_to_end(gcloud_backend(tmp_path, retries=0), reg, tmp_path)
    assert verbs(cloud) == ["create sw-0", "delete sw-0", "create sw-0", "setup sw-0", "start r1 on sw-0",
                            "delete sw-0"]
    assert reg.status("r1")["status"] == "done" and reg.status("r1")["attempts"] == 1


def test_a_run_recorded_on_a_slice_outside_the_pool_is_reported_not_forgotten(cloud, tmp_path):
    reg = registry(tmp_path, "r1")
    reg.mark_running("r1", "old-7")
    with pytest.raises(UserError, match="'r1' is recorded as running on 'old-7', outside this pool"):
        gcloud_backend(tmp_path).step(reg)
    assert all(argv[3] == "describe" for argv in cloud.calls("gcloud"))
