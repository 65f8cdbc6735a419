"""Every file path a user gives the CLI accepts gs:// (read and written through moe_jax.paths / etils.epath), or
is refused in one line where only the local disk will do; never a mangled local 'gs:/…' folder.

The bucket is conftest.py's `bucket` fixture: gs://b/… lives in tmp_path/gcs/b/….
"""

from __future__ import annotations

import json

import pytest

from moe_jax.cli import main
from moe_jax.scaling.constants import EPOCH2024_CSV
from moe_jax.sweep.grid import RunSpec
from moe_jax.sweep.registry import Registry

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """Run in an empty folder; afterwards no local 'gs:' folder may exist (what pathlib makes of gs://b)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder
    assert not (folder / "gs:").exists()


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_reads_runs_from_and_writes_fit_json_and_plots_to_a_bucket(bucket, cwd, capsys):
    (bucket / "b").mkdir(parents=True)
    (bucket / "b" / "runs.csv").write_bytes(EPOCH2024_CSV.read_bytes())
    code, out, err = cli(capsys, "fit", "gs://b/runs.csv", "--law", "chinchilla", "--grid", "small", "--json",
                         "--quiet", "--out", "gs://b/fitout")
    assert code == 0, err
    result = json.loads(out)
    assert result["coefficients"]["alpha"] == pytest.approx(0.3473, abs=1e-4)  # SPEC §2, as from the local file
    written = bucket / "b" / "fitout"
    assert json.loads((written / "fit.json").read_text())["coefficients"] == result["coefficients"]
    for png in ("loss_vs_flops.png", "residuals.png", "compute_optimal.png"):
        assert (written / png).read_bytes()[:8] == PNG, png


def test_law_and_plan_read_coeffs_from_a_bucket_as_from_a_local_file(bucket, cwd, capsys):
    fit = {"law": "chinchilla", "coefficients": {"A": 482.0, "alpha": 0.3478, "B": 2085.0, "beta": 0.3658,
                                                  "C": 1.817}}
    (cwd / "fit.json").write_text(json.dumps(fit))
    (bucket / "b" / "fits").mkdir(parents=True)
    (bucket / "b" / "fits" / "fit.json").write_text(json.dumps(fit))
    for command in (["law", "--n-act", "1e9", "--tokens", "2e10", "--json"], ["plan", "--flops", "1e20", "--json"]):
        local = cli(capsys, *command, "--coeffs", "fit.json")
        code, out, err = cli(capsys, *command, "--coeffs", "gs://b/fits/fit.json")
        assert local[0] == 0 and code == 0, err
        assert json.loads(out) == {**json.loads(local[1]), "coeffs": "gs://b/fits/fit.json"}, command
    code, out, err = cli(capsys, "law", "--n-act", "1e9", "--tokens", "2e10", "--coeffs", "gs://b/none/fit.json")
    assert code == 2 and err.strip() == ("moe-jax law: error: coefficient file gs://b/none/fit.json not found: give "
                                         "an existing JSON file from `moe-jax fit` or one of paper2025, "
                                         "hoffmann2022, epoch2024")


def test_plan_writes_its_plots_to_a_bucket(bucket, cwd, capsys):
    code, out, err = cli(capsys, "plan", "--flops", "1e20", "--plot", "gs://b/plan")
    assert code == 0, err
    assert sorted(p.name for p in (bucket / "b" / "plan").iterdir()) == [
        "compute_optimal.png", "loss_vs_flops.png", "memory_optimal_map.png"]
    assert (bucket / "b" / "plan" / "loss_vs_flops.png").read_bytes()[:8] == PNG


def _done_sweep(folder) -> Registry:
    """A sweep directory whose one branch run is done."""
    spec = RunSpec("d16_E4_b", "branch", "d16", 4, 2000, 1000, str(folder / "runs" / "b"), "configs/tiny.py")
    registry = Registry.create(folder / "sweep", [spec], {"grid": "test", "runs_root": str(folder / "runs")})
    registry.mark_running(spec.id)
    registry.mark_done(spec.id, {"n_act": 1000, "n_total": 3000, "tokens": 2000, "experts": 4, "loss": 3.25,
                                 "flops": 1.2e7, "d_model": 16, "n_layers": 1, "vocab": 256})
    return registry


def test_sweep_collect_writes_its_csv_to_a_bucket_exactly_as_locally(bucket, cwd, capsys):
    registry = _done_sweep(cwd)
    assert cli(capsys, "sweep", "collect", "--dir", registry.dir, "--out", "local.csv")[0] == 0
    code, out, err = cli(capsys, "sweep", "collect", "--dir", registry.dir, "--out", "gs://b/sweep/runs.csv")
    assert code == 0, err
    assert out.strip().endswith("to gs://b/sweep/runs.csv; next: moe-jax fit gs://b/sweep/runs.csv --law joint")
    assert (bucket / "b" / "sweep" / "runs.csv").read_bytes() == (cwd / "local.csv").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["sweep", "plan", "--grid", "smoke", "--dir", "gs://b/sweep"], "sweep directory (--dir) gs://b/sweep must be on "
                                                                   "the local disk, not in a bucket"),
    (["sweep", "run", "--dir", "gs://b/sweep"], "--runs-root gs://BUCKET/PATH"),
    (["sweep", "status", "--dir", "gs://b/sweep"], "it holds the SQLite registry"),
    (["sweep", "collect", "--dir", "gs://b/sweep", "--out", "runs.csv"], "sweep directory (--dir) gs://b/sweep"),
    (["reuse-report", "--dir", "gs://b/sweep"], "sweep directory (--dir) gs://b/sweep must be on the local disk"),
    (["sweep", "plan", "--grid", "gs://b/grid.py", "--dir", "sweep"], "grid gs://b/grid.py must be on the local disk"),
    (["model-info", "--config", "gs://b/mine.py:x"], "config gs://b/mine.py:x must be on the local disk"),
])
def test_paths_that_must_be_local_refuse_gs_in_one_line(bucket, cwd, capsys, argv, message):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert list(cwd.iterdir()) == [] and not bucket.exists()  # nothing written, here or in the bucket


def test_tpu_settings_file_in_a_bucket(bucket, cwd, capsys, monkeypatch):
    (bucket / "b").mkdir(parents=True)
    (bucket / "b" / "tpu.toml").write_text('project = "p"\nzone = "us-west4-a"\naccelerator = "v5litepod-16"\n')
    code, out, err = cli(capsys, "tpu", "create", "moe-1", "--settings", "gs://b/tpu.toml", "--dry-run")
    assert code == 0, err
    assert "--accelerator-type=v5litepod-16" in out and "--project=p" in out


def test_the_data_dir_must_be_local_while_vocabulary_and_shards_may_be_in_a_bucket():
    from moe_jax.data.config import data_config
    from moe_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="data.data_dir='gs://b/data' must be on the local disk: token caches"):
        data_config(data_dir="gs://b/data")
    config = data_config(vocab_path="gs://b/gpt2", task="fineweb_edu", fineweb_path="gs://b/fineweb")
    assert (config.vocab_path, config.fineweb_path) == ("gs://b/gpt2", "gs://b/fineweb")
