"""`moe-jax model-info`: counts from the built model, JSON output, one-line errors with exit 2."""

import json
from pathlib import Path

import pytest

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


SMALL = ["--config.model.vocab_size=512", "--config.model.d_model=32", "--config.model.n_layers=2",
         "--config.model.n_heads=2", "--config.model.head_dim=16", "--config.model.ffn_hidden=64",
         "--config.train.batch_size=8", "--config.data.seq_len=16"]


def test_compile_reports_per_device_memory_on_a_simulated_mesh(capsys):
    """Re-runs itself on 4 simulated CPU devices, compiles the train step from abstract shapes."""
    code, out, err = run(capsys, "--config", f"{CONFIGS}/tiny.py", "--mesh", "fsdp=2,expert=2", "--compile", "--json", *SMALL)
    assert code == 0, err
    info = json.loads(out)
    assert info["devices"] == 4 and info["mesh"] == {"data": 1, "fsdp": 2, "expert": 2, "tensor": 1}
    params, opt = info["per_device_bytes"]["params"], info["per_device_bytes"]["optimizer"]
    total = 4 * (info["n_total"] + info["n_router"])
    # Experts split E over expert and D over fsdp, attention and embeddings D over fsdp·expert: a quarter each,
    # except norms (replicated) and the router's E axis.
    assert total / 4 <= params < 1.05 * total / 4
    assert 2 * params <= opt < 2 * params + 64  # Adam's two moments, laid out like the params, + scalars
    assert info["per_device_bytes"]["temp"] > 0 and info["compile_s"] > 0


def test_compile_errors_are_one_line(capsys):
    for argv in (["--mesh", "fsdp=2,expert=3", "--compile"], ["--mesh", "pipeline=2", "--compile"], ["--compile"],
                 ["--mesh", "fsdp=2"]):
        code, out, err = run(capsys, "--config", f"{CONFIGS}/tiny.py", *argv, *SMALL)
        assert code == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1 and err.startswith("moe-jax model-info: error:"), err
    assert "model.experts = 8 is not divisible by mesh.expert = 3" in run(
        capsys, "--config", f"{CONFIGS}/tiny.py", "--mesh", "fsdp=2,expert=3", "--compile", *SMALL)[2]


@pytest.mark.slow
def test_compile_the_paper_d1024_e32_on_64_devices(capsys):
    code, out, err = run(capsys, "--config", f"{CONFIGS}/paper.py:d1024_E32", "--mesh", "fsdp=16,expert=4",
                         "--compile", "--json", "--config.train.batch_size=64")
    assert code == 0, err
    info = json.loads(out)
    state = 12 * (info["n_total"] + info["n_router"])  # f32 params + two Adam moments
    per_device = info["per_device_bytes"]["params"] + info["per_device_bytes"]["optimizer"]
    assert info["devices"] == 64 and per_device < 1.02 * state / 64
