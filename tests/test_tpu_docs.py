"""The TPU guide's dry-run block ("From zero to a sweep on TPU") is exactly what the commands print."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from fakes.cloud import FakeCloud
from moe_jax.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "tpu.md"
SECTION = "## From zero to a sweep on TPU"


def _section_blocks() -> dict[str, list[str]]:
    """Fenced blocks of the section by language; the dry-run block is the console block with `--dry-run`."""
    text = DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S):
        if lang != "console" or "--dry-run" in body:
            blocks[lang] = body.splitlines()
    return blocks


def test_the_guide_quotes_the_dry_run_output_of_its_commands(tmp_path, monkeypatch, capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)  # nothing may reach it
    blocks = _section_blocks()
    settings = tmp_path / "tpu.toml"
    settings.write_text("\n".join(blocks["toml"]) + "\n")
    commands = [i for i, line in enumerate(blocks["console"]) if line.startswith("$ ")]
    assert len(commands) >= 5
    for start, end in zip(commands, [*commands[1:], len(blocks["console"])]):
        argv = shlex.split(blocks["console"][start][2:])
        assert argv[0] == "moe-jax" and "--dry-run" in argv
        argv = [str(settings) if arg == "tpu.toml" else arg for arg in argv[1:]]
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.splitlines() == blocks["console"][start + 1:end], argv
    assert cloud.calls() == []
