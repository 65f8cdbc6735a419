"""`moe-jax train` bad input: one line on stderr, exit code 2, nothing written and nothing lost.

All of these are refused before a model is built, so they take a second each.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from moe_jax.cli import main
from moe_jax.errors import ConfigError
from moe_jax.train.preflight import preflight

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import FakeData, tiny_config  # noqa: E402

TINY = ["--config", "tiny", "--config.train.progress=none"]
# `moe-jax demo` checks every run's workdir (and WORKDIR itself) before preparing data or training.
COMMANDS = {"train": ["train", *TINY], "demo": ["demo", "--tokens", "4096", "--seeds", "1"]}


def _run(capsys, command, workdir, *extra) -> tuple[int, list[str]]:
    code = main([*COMMANDS[command], "--workdir", str(workdir), *extra])
    out, err = capsys.readouterr()
    assert "training" not in out and "preparing" not in out  # refused before any work started
    return code, [line for line in err.splitlines() if line.strip()]


def _train(capsys, workdir, *extra) -> tuple[int, list[str]]:
    return _run(capsys, "train", workdir, *extra)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _suggested_path(line: str) -> Path:
    """The '(e.g. PATH)' a workdir error proposes; it must be usable: its nearest existing ancestor a directory."""
    path = Path(re.search(r"\(e\.g\. (\S+)\)$", line).group(1))
    assert next(p for p in (path, *path.parents) if p.exists()).is_dir(), line
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_workdir_that_is_a_file(tmp_path, capsys, command):
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    code, err = _run(capsys, command, target)
    assert code == 2 and len(err) == 1 and f"workdir {target} is a file" in err[0]
    assert _suggested_path(err[0]) == tmp_path / "notes.txt_runs"
    assert _snapshot(tmp_path) == {"notes.txt": b"my notes"}


@pytest.mark.parametrize("command", COMMANDS)
def test_workdir_under_a_file(tmp_path, capsys, command):
    (tmp_path / "file").write_text("x")
    (tmp_path / "file_runs").write_text("a file in the way of the first suggestion")
    before = _snapshot(tmp_path)
    code, err = _run(capsys, command, tmp_path / "file" / "run")
    assert code == 2 and len(err) == 1 and f"is under {tmp_path / 'file'}, which is a file" in err[0]
    assert _suggested_path(err[0]) == tmp_path / "file_runs2" / "run"
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_workdir_that_cannot_be_written(capsys, command):
    # /sys refuses new directories even for root (os.access says yes, mkdir says EPERM).
    code, err = _run(capsys, command, "/sys/moe_jax_run")
    assert code == 2 and len(err) == 1 and "cannot write to workdir /sys/moe_jax_run" in err[0]


def test_demo_checks_every_run_before_training_the_first(tmp_path, capsys):
    """The second run's directory holds another config: refused before the first run trains, nothing written."""
    from moe_jax.configlib import load_config

    other = json.loads(load_config("demo:moe", ["--config.model.d_model=64"]).to_json_best_effort())
    (tmp_path / "moe_e8_s0").mkdir()
    (tmp_path / "moe_e8_s0" / "config.json").write_text(json.dumps(other))
    (tmp_path / "dense_s0").write_text("a file where the dense run's directory goes")
    before = _snapshot(tmp_path)
    code, err = _run(capsys, "demo", tmp_path)
    assert code == 2 and len(err) == 1 and f"workdir {tmp_path / 'dense_s0'} is a file" in err[0]
    (tmp_path / "dense_s0").unlink()
    del before["dense_s0"]
    code, err = _run(capsys, "demo", tmp_path)
    assert code == 2 and len(err) == 1 and "moe_e8_s0 holds a run with model.d_model=64" in err[0]
    assert _snapshot(tmp_path) == before and not (tmp_path / "dense_s0").exists()


def test_truncated_config_json_is_reported_and_kept(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model": {"d_model": 12')
    before = _snapshot(tmp_path)
    code, err = _train(capsys, tmp_path)
    assert code == 2 and len(err) == 1 and "config.json is unreadable" in err[0] and "new --workdir" in err[0]
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("override, needle", [
    ("--config.model.top_k=9", "top_k"),
    ("--config.train.init_from=/nonexistent/run", "holds no checkpoints/"),
    ("--config.model.vocab_size=100", "model.vocab_size (100) is smaller"),
])
def test_bad_config_writes_nothing(tmp_path, capsys, override, needle):
    workdir = tmp_path / "run"
    code, err = _train(capsys, workdir, override)
    assert code == 2 and len(err) == 1 and needle in err[0]
    assert not workdir.exists()


def test_refused_config_leaves_an_existing_workdir_unchanged(tmp_path, capsys):
    """A different config on a workdir that holds a run: refused, config.json untouched."""
    from moe_jax.configlib import load_config

    other = json.loads(load_config("tiny", ["--config.model.d_model=64"]).to_json_best_effort())
    (tmp_path / "config.json").write_text(json.dumps(other))
    before = _snapshot(tmp_path)
    code, err = _train(capsys, tmp_path)
    assert code == 2 and len(err) == 1 and "holds a run with model.d_model=64, not 128" in err[0]
    assert _snapshot(tmp_path) == before


def test_init_from_checks_step_and_tokens_before_writing(tmp_path):
    trunk = tmp_path / "trunk" / "checkpoints"
    for step, tokens in ((4, 256), (12, 1280)):
        (trunk / str(step) / "meta").mkdir(parents=True)
        (trunk / str(step) / "meta" / "metadata").write_text(json.dumps({"tokens": tokens, "step": step}))
    with pytest.raises(ConfigError, match=r"no checkpoint at step 5; available: \[4, 12\]"):
        preflight(tiny_config(init_from=f"{trunk.parent}:5"), FakeData)
    with pytest.raises(ConfigError, match="is at 1,280 tokens, past this run's 512"):
        preflight(tiny_config(init_from=f"{trunk.parent}:12", steps=6), FakeData)
    preflight(tiny_config(init_from=f"{trunk.parent}:4"), FakeData)  # inside the run: accepted


def test_short_run_gets_a_clamped_warmup_with_a_note():
    config, notes = preflight(tiny_config(steps=3, warmup_tokens=50_000.0), FakeData)
    # 3 steps of 4 × 16 tokens = 192 tokens; 5 % of them, announced.
    assert config.train.warmup_tokens == pytest.approx(0.05 * 192)
    assert len(notes) == 1 and "warming up over 10 tokens (5% of the run)" in notes[0]
    config, notes = preflight(tiny_config(), FakeData)
    assert config.train.warmup_tokens == 128.0 and notes == []
