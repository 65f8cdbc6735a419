"""`moe-jax tpu …` against a fake gcloud on PATH: the exact commands, the label guard, and bad input."""

from __future__ import annotations

import json
import shlex

import pytest

from fakes.cloud import FakeCloud
from moe_jax.cli import main
from moe_jax.errors import UserError
from moe_jax.tpu.accelerators import parse_accelerator
from moe_jax.tpu.mesh import check_mesh_fits

WHERE = ["--zone=us-west4-a", "--project=my-project"]
SETTINGS = """\
project = "my-project"
zone = "us-west4-a"
bucket = "gs://my-bucket/moe-jax"
accelerator = "v5litepod-16"
capacity = "spot"
[labels]
team = "scaling"
"""


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    return FakeCloud(tmp_path / "cloud", monkeypatch)


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "tpu.toml"
    path.write_text(SETTINGS)
    return str(path)


def ours(*states):
    return {"states": list(states), "labels": {"created-by": "moe-jax"}}


@pytest.mark.parametrize("capacity, gcloud, flags", [
    ("--spot", [], ["--spot"]),
    ("--reserved", [], ["--reserved"]),
    ("--on-demand", [], []),
    ("--flex", ["alpha"], ["--provisioning-model=flex-start", "--max-run-duration=24h"]),
])
def test_create_queues_a_labelled_slice_with_the_chosen_capacity(cloud, settings, capacity, gcloud, flags):
    assert main(["tpu", "create", "moe-1", "--settings", settings, capacity]) == 0
    assert cloud.calls() == [[*gcloud, "compute", "tpus", "queued-resources", "create", "moe-1", "--node-id=moe-1",
                              "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", *WHERE,
                              *flags, "--labels=team=scaling,created-by=moe-jax"]]
    assert cloud.state()["queued"]["moe-1"]["labels"] == {"team": "scaling", "created-by": "moe-jax"}


def test_setup_copies_the_wheel_to_every_worker_and_installs_it_with_jax_tpu(cloud, settings, tmp_path):
    wheel = tmp_path / "moe_jax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    cloud.world(queued={"moe-1": ours("ACTIVE")})
    assert main(["tpu", "setup", "moe-1", "--settings", settings, "--wheel", str(wheel)]) == 0
    install = ("sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv && "
               "python3.11 -m venv moe-jax/venv && moe-jax/venv/bin/pip install -q "
               'moe_jax-0.1.0-py3-none-any.whl "jax[tpu]==0.10.2"')
    assert cloud.calls() == [
        ["compute", "tpus", "tpu-vm", "scp", str(wheel), "moe-1:moe_jax-0.1.0-py3-none-any.whl", *WHERE,
         "--worker=all"],
        ["compute", "tpus", "tpu-vm", "ssh", "moe-1", *WHERE, "--worker=all", f"--command={install}"],
    ]


def _started_train(call: list[str]) -> list[str]:
    """The `moe-jax train …` argv inside the start snippet of an ssh call."""
    snippet = call[-1].removeprefix("--command=")
    inner = shlex.split(snippet.split("sh -c ", 1)[1])[0]  # "TRAIN; echo $? > …exit"
    return shlex.split(inner.split(";")[0])


def test_run_starts_train_on_every_worker_with_the_mesh_and_a_gs_workdir(cloud, settings):
    cloud.world(queued={"moe-1": ours("ACTIVE")})
    argv = ["tpu", "run", "moe-1", "--settings", settings, "--config", "configs/paper.py:d1024_E8",
            "--mesh", "fsdp=4,expert=4", "--config.train.tokens=1e9"]
    assert main(argv) == 0
    [call] = cloud.calls()
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "moe-1", *WHERE, "--worker=all"]
    assert _started_train(call) == [
        "moe-jax/venv/bin/moe-jax", "train", "--multi-host", "--config", "configs/paper.py:d1024_E8",
        "--config.train.tokens=1e9",
        "--config.mesh.fsdp=4", "--config.mesh.expert=4", "--workdir", "gs://my-bucket/moe-jax/runs/d1024_E8"]
    snippet = call[-1]
    assert "> moe-jax/logs/d1024_E8.log 2>&1" in snippet and "echo $! > moe-jax/train.pid" in snippet
    assert "ln -sfn logs/d1024_E8.log moe-jax/train.log" in snippet


def test_run_uploads_a_config_file_that_is_not_shipped_and_checks_its_mesh_section(cloud, settings, tmp_path):
    config = tmp_path / "mine.py"
    config.write_text("import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                      "    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=4, expert=4, tensor=1))\n"
                      "    return c\n")
    cloud.world(queued={"moe-1": ours("ACTIVE")})
    assert main(["tpu", "run", "moe-1", "--settings", settings, "--config", str(config), "--run-name", "r1"]) == 0
    scp, ssh = cloud.calls()
    assert scp == ["compute", "tpus", "tpu-vm", "scp", str(config), "moe-1:moe-jax/mine.py", *WHERE, "--worker=all"]
    assert _started_train(ssh)[2:] == ["--multi-host", "--config", "moe-jax/mine.py", "--workdir",
                                       "gs://my-bucket/moe-jax/runs/r1"]
    # data=-1 takes the rest; expert=8 would need 32 of the 16 chips
    assert main(["tpu", "run", "moe-1", "--settings", settings, "--config", str(config),
                 "--config.mesh.expert=8"]) == 2
    assert len(cloud.calls()) == 2


def test_status_logs_and_stop(cloud, settings, capsys):
    cloud.world(queued={"moe-1": ours("PROVISIONING", "ACTIVE"), "theirs": {"states": ["ACTIVE"], "labels": {}}})
    assert main(["tpu", "status", "moe-1", "--settings", settings]) == 0
    assert main(["tpu", "status", "moe-1", "--settings", settings]) == 0
    assert main(["tpu", "status", "theirs", "--settings", settings]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "moe-1: PROVISIONING", "moe-1: ACTIVE", "theirs: ACTIVE (not created by moe-jax)"]
    assert main(["tpu", "logs", "moe-1", "--settings", settings, "--follow", "--lines", "20"]) == 0
    assert main(["tpu", "stop", "moe-1", "--settings", settings]) == 0
    assert cloud.calls()[-2:] == [
        ["compute", "tpus", "tpu-vm", "ssh", "moe-1", *WHERE, "--worker=0",
         "--command=tail -n 20 -F moe-jax/train.log"],
        ["compute", "tpus", "tpu-vm", "ssh", "moe-1", *WHERE, "--worker=all",
         '--command=kill -TERM -- "-$(cat moe-jax/train.pid)"'],
    ]


def test_delete_describes_then_deletes_a_slice_we_created(cloud, settings):
    cloud.world(queued={"moe-1": ours("ACTIVE")})
    assert main(["tpu", "delete", "moe-1", "--settings", settings]) == 0
    assert cloud.calls() == [
        ["compute", "tpus", "queued-resources", "describe", "moe-1", *WHERE, "--format=json"],
        ["compute", "tpus", "queued-resources", "delete", "moe-1", *WHERE, "--force", "--quiet"],
    ]
    assert cloud.state()["queued"] == {}


@pytest.mark.parametrize("labels", [{}, {"created-by": "someone-else"}, {"team": "scaling"}])
def test_delete_refuses_a_slice_without_our_label_naming_it(cloud, settings, capsys, labels):
    cloud.world(queued={"prod-pod": {"states": ["ACTIVE"], "labels": labels}})
    assert main(["tpu", "delete", "prod-pod", "--settings", settings]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("+ ")]  # echoed commands
    assert len(err) == 1 and "'prod-pod'" in err[0] and "created-by=moe-jax" in err[0]
    assert [call[3] for call in cloud.calls()] == ["describe"]  # read-only: nothing deleted
    assert "prod-pod" in cloud.state()["queued"]


BAD_INPUT = [
    (["run", "--config", "configs/paper.py:d1024_E8", "--mesh", "fsdp=4,expert=8"], "needs 32·k devices but v5litepod-16 has 16 chips"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--mesh", "fsdp=4,expert=4", "--accelerator", "v5p-16"],
     "zone 'us-west4-a' does not offer v5p"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--mesh", "fsdp=4,expert=4", "--accelerator", "v4-16",
      "--zone", "us-central2-b"], "needs 16·k devices but v4-16 has 8 chips"),
    (["create", "--accelerator", "v7-8"], "unknown accelerator type 'v7-8'"),
    (["create", "--accelerator", "v5litepod"], "unknown accelerator type 'v5litepod'"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--bucket", "s3://my-bucket"], "bucket 's3://my-bucket'"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--workdir", "/tmp/run"], "workdir '/tmp/run'"),
    (["create", "--runtime-version", "v2-alpha-tpuv6e"], "v5litepod slices need 'v2-alpha-tpuv5-lite'"),
    (["create", "--zone", "us-central2-b"], "zone 'us-central2-b' does not offer v5litepod"),
    (["create", "--mesh", "x"], "unrecognised arguments"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--mesh", "fsdp=0"], "bad --mesh part 'fsdp=0'"),
    (["create", "--accelerator", "v5litepod-7"],
     "no v5litepod slice of size 7 ('v5litepod-7'); use v5litepod-N with N one of 1, 4, 8, 16, 32, 64, 128, 256"),
    (["create", "--accelerator", "v6e-2"], "N one of 1, 4, 8, 16, 32, 64, 128, 256"),
    (["create", "--accelerator", "v5p-24", "--zone", "us-east5-a"], "no v5p slice of size 24"),
    (["create", "--accelerator", "v4-4", "--zone", "us-central2-b"], "N one of 8, 16, 32, 64, 128"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--bucket", "gs://ab"], "bucket name 'ab' must be 3-63"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--bucket", "gs://" + "b" * 64 + "/runs"],
     "must be 3-63 characters"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--workdir", "gs://My_Bucket/r"], "bucket name 'My_Bucket'"),
    (["setup", "--wheel", "gs://my-bucket/moe.whl"], "--wheel gs://my-bucket/moe.whl must be on the local disk"),
    (["setup", "--wheel-dir", "gs://my-bucket/dist"], "--wheel-dir gs://my-bucket/dist must be on the local disk"),
    (["create", "--label", "team"], "bad --label 'team'; use KEY=VALUE"),
    (["create", "--label", "Team=x"], "bad label Team='x'"),
    (["status", "--label", "team=a b"], "bad label team='a b'"),
    (["run", "--config", "configs/paper.py:d1024_E8", "--label", "9lives=x"], "bad label 9lives='x'"),
    (["delete", "--label", "team=" + "x" * 64], "bad label team="),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_runs_nothing(cloud, settings, capsys, args, message):
    assert main(["tpu", args[0], "moe-1", "--settings", settings, *args[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert cloud.calls() == []


@pytest.mark.parametrize("action, flags, message", [
    ("create", ["--zone", "us-west4-a", "--accelerator", "v5litepod-16"], "missing project"),
    ("delete", ["--zone", "us-west4-a"], "missing project"),
    ("create", ["--project", "p", "--accelerator", "v5litepod-16"], "missing zone"),
    ("status", ["--project", "p"], "missing zone"),
    ("create", ["--project", "p", "--zone", "us-west4-a"], "missing accelerator"),
])
def test_missing_settings_are_one_line_exit_2_and_run_nothing(cloud, capsys, action, flags, message):
    assert main(["tpu", action, "moe-1", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert cloud.calls() == []


def test_settings_file_errors_and_zone_override(cloud, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"project": "p", "zone": "us-west4-a", "regoin": "x"}))
    assert main(["tpu", "status", "moe-1", "--settings", str(bad)]) == 2
    assert "unknown key 'regoin'" in capsys.readouterr().err
    zones = tmp_path / "zones.toml"
    zones.write_text('project = "p"\nzone = "us-west9-z"\naccelerator = "v6e-8"\n[zones]\nv6e = ["us-west9-z"]\n')
    assert main(["tpu", "create", "moe-1", "--settings", str(zones), "--dry-run"]) == 0
    assert "--zone=us-west9-z" in capsys.readouterr().out
    assert cloud.calls() == []


def test_slice_sizes_are_checked_against_a_table_a_settings_file_can_replace(cloud, tmp_path, capsys):
    for name in ("v5litepod-256", "v6e-1", "v5p-8", "v5p-12288", "v4-4096"):
        family = name.split("-")[0]
        zone = {"v5litepod": "us-west4-a", "v6e": "us-east5-a", "v5p": "us-east5-a", "v4": "us-central2-b"}[family]
        assert main(["tpu", "create", "moe-1", "--project", "p", "--zone", zone, "--accelerator", name,
                     "--dry-run"]) == 0, capsys.readouterr().err
    sizes = tmp_path / "sizes.toml"
    sizes.write_text('project = "p"\nzone = "us-west4-a"\naccelerator = "v5litepod-2"\n[sizes]\nv5litepod = [2]\n')
    assert main(["tpu", "create", "moe-1", "--settings", str(sizes), "--dry-run"]) == 0
    assert "--accelerator-type=v5litepod-2" in capsys.readouterr().out
    assert main(["tpu", "create", "moe-1", "--settings", str(sizes), "--accelerator", "v5litepod-16"]) == 2
    assert "N one of 2 (or list the size under [sizes]" in capsys.readouterr().err
    assert cloud.calls() == []


def test_dry_run_prints_every_command_and_runs_none(cloud, settings, capsys):
    cloud.world(queued={"moe-1": ours("ACTIVE")})
    assert main(["tpu", "delete", "moe-1", "--settings", settings, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gcloud compute tpus queued-resources describe moe-1 --zone=us-west4-a --project=my-project --format=json",
        "gcloud compute tpus queued-resources delete moe-1 --zone=us-west4-a --project=my-project --force --quiet"]
    assert main(["tpu", "setup", "moe-1", "--settings", settings, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "python -m pip wheel --no-deps . -w dist" and len(out) == 3
    assert [shlex.split(line)[0] for line in out] == ["python", "gcloud", "gcloud"]
    assert cloud.calls() == []


def test_chips_per_accelerator_and_the_mesh_rule():
    assert [parse_accelerator(t).chips for t in ("v5litepod-16", "v6e-8", "v5p-32", "v4-8")] == [16, 8, 16, 4]
    check_mesh_fits({"data": -1, "expert": 4}, 16, "v5litepod-16")  # data takes the remaining 4
    check_mesh_fits({"fsdp": 4, "expert": 4}, 16, "v5litepod-16")
    for mesh, message in [({"data": -1, "fsdp": -1}, "-1 on 2 axes"), ({"data": -1, "expert": 3}, "divide 16"),
                          ({"fsdp": 8}, "needs 8 devices")]:
        with pytest.raises(UserError, match=message):
            check_mesh_fits(mesh, 16, "v5litepod-16")
