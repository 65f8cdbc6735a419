"""`moe-jax model-info`: counts from the built model, JSON output, one-line errors with exit 2."""

import json
from pathlib import Path

from moe_jax import cli
from moe_jax.scaling.counting import ModelShape

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def run(capsys, *argv):
    code = cli.main(["model-info", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_matches_closed_form_counts(capsys):
    code, out, _ = run(capsys, "--config", f"{CONFIGS}/paper.py:d2304_E32", "--json", "--seq-len", "1024")
    assert code == 0
    info = json.loads(out)
    assert info["seq_len"] == 512  # config.data.seq_len wins over --seq-len
    shape = ModelShape.paper(2304, 32)
    for key, value in shape.counts().items():
        assert info[key] == value
    assert info["n_act"] == 2_716_254_720 and abs(info["n_act"] / 2715.9e6 - 1) < 1e-3  # SPEC §5: 2715.9 M
    assert (info["d_model"], info["n_layers"], info["n_heads"], info["experts"], info["vocab"]) == (2304, 36, 36, 32, 50257)
    flops = shape.flops_per_token(512)
    assert info["flops_per_token"] == 6 * info["n_act"] == flops["flops_per_token"]
    assert info["flops_per_token_with_attention"] == flops["flops_per_token_with_attention"]
    assert info["n_router"] == 2304 * 32 * 36


def test_seq_len_flag_without_data_section(capsys, tmp_path):
    model_only = tmp_path / "m.py"
    model_only.write_text(
        "import ml_collections\nfrom moe_jax.model import paper_shape\n"
        "def get_config(arg=None):\n    c = ml_collections.ConfigDict()\n    c.model = paper_shape(512, 8)\n    return c\n"
    )
    code, out, _ = run(capsys, "--config", str(model_only), "--json", "--seq-len", "1024")
    info = json.loads(out)
    assert code == 0 and info["seq_len"] == 1024
    expected = ModelShape.paper(512, 8).flops_per_token(1024)["flops_per_token_with_attention"]
    assert info["flops_per_token_with_attention"] == expected


def test_text_output_and_overrides(capsys):
    code, out, _ = run(capsys, "--config", f"{CONFIGS}/tiny.py", "--config.model.experts=1")
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["experts"] == "1" and rows["n_router"] == "0"
    assert rows["n_act"].split()[0] == rows["n_total"].split()[0]


def test_errors_exit_2_with_one_line(capsys):
    for argv in (["--config", "nope.py"], ["--config", f"{CONFIGS}/tiny.py", "--config.model.norm=batchnorm"],
                 ["--config", f"{CONFIGS}/tiny.py", "--bogus"], ["--config", f"{CONFIGS}/tiny.py", "--seq-len", "0"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith("moe-jax model-info: error:")
