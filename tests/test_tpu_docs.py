"""README's "From zero to a sweep on TPU": the dry-run block is exactly what the commands print, and the
sweep commands it shows are ones `moe-jax sweep` accepts."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from fakes.cloud import FakeCloud
from moe_jax.cli import main
from moe_jax.sweep import cli as sweep_cli

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## From zero to a sweep on TPU"


def _section_blocks() -> dict[str, list[str]]:
    """Fenced blocks of the section by language; the dry-run block is the console block with `--dry-run`."""
    text = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S):
        if lang != "console" or "--dry-run" in body:
            blocks.setdefault(lang, []).extend(body.replace("\\\n", "").splitlines())
    return blocks


def test_the_readme_quotes_the_dry_run_output_of_its_commands(tmp_path, monkeypatch, capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)  # nothing may reach it
    blocks = _section_blocks()
    settings = tmp_path / "tpu.toml"
    settings.write_text("\n".join(blocks["toml"]) + "\n")
    commands = [i for i, line in enumerate(blocks["console"]) if line.startswith("$ ")]
    assert len(commands) >= 5
    assert any("v5litepod-16" in line for line in blocks["console"]) and \
        any("--config configs/paper.py:d1024_E8 --mesh fsdp=4,expert=4" in line for line in blocks["console"])
    for start, end in zip(commands, [*commands[1:], len(blocks["console"])]):
        argv = shlex.split(blocks["console"][start][2:])
        assert argv[0] == "moe-jax" and "--dry-run" in argv
        argv = [str(settings) if arg == "tpu.toml" else arg for arg in argv[1:]]
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.splitlines() == blocks["console"][start + 1:end], argv
    assert cloud.calls() == []


def test_the_readme_sweep_commands_use_flags_that_exist():
    parser = argparse.ArgumentParser(exit_on_error=False)
    sweep_cli.add_arguments(parser)
    lines = [shlex.split(line) for line in _section_blocks()["sh"]]
    sweeps = [part[2:] for line in lines for part in _split_and(line) if part[:2] == ["moe-jax", "sweep"]]
    assert {s[0] for s in sweeps} >= {"plan", "run", "status", "collect"}
    assert any(s[:1] == ["run"] and "--backend" in s and "xpk" in s for s in sweeps)
    for argv in sweeps:
        args, extra = parser.parse_known_args(argv)
        assert all(e.startswith("--config.") for e in extra) and (args.action == "plan" or not extra), argv


def _split_and(words: list[str]) -> list[list[str]]:
    """'a b && c d' -> [['a', 'b'], ['c', 'd']]."""
    parts, current = [], []
    for word in words:
        if word == "&&":
            parts.append(current)
            current = []
        else:
            current.append(word)
    return [*parts, current]
