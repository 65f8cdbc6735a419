"""Loading config files with overrides; every bad input is a one-line ConfigError."""

import importlib.util
from pathlib import Path

import pytest

from moe_jax.configlib import load_config
from moe_jax.errors import ConfigError
from moe_jax.model import validate_model_config
from moe_jax.scaling import constants

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY, PAPER = str(CONFIGS / "tiny.py"), str(CONFIGS / "paper.py")


def test_overrides_are_typed():
    cfg = load_config(f"{PAPER}:d1280_L16_E8", [
        "--config.model.top_k=2", "--config.model.final_norm=true", "--config.model.capacity_factor_eval=2",
        "--config.model.dispatch=onehot",
    ])
    m = cfg.model
    assert (m.d_model, m.n_layers, m.n_heads, m.head_dim, m.ffn_hidden) == (1280, 16, 10, 128, 3840)
    assert (m.experts, m.top_k, m.final_norm, m.capacity_factor_eval, m.dispatch) == (8, 2, True, 2.0, "onehot")
    assert isinstance(m.capacity_factor_eval, float)


def test_every_paper_name_loads_a_valid_shape():
    for experts in constants.PAPER_EXPERTS:
        assert load_config(f"{PAPER}:d512_E{experts}").model.experts == experts
    spec = importlib.util.spec_from_file_location("paper_cfg", PAPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # get_config directly for the 17 × 6 names: no flag parsing
    for shape, (d, layers, heads) in constants.PAPER_SHAPES.items():
        for experts in constants.PAPER_EXPERTS:
            m = module.get_config(f"{shape}_E{experts}").model
            validate_model_config(m)
            assert (m.d_model, m.n_layers, m.n_heads, m.experts, m.vocab_size) == (d, layers, heads, experts, 50257)
            assert m.head_dim * m.n_heads == d and m.ffn_hidden == 3 * d


def test_tiny_is_a_small_valid_moe():
    m = load_config(TINY).model
    validate_model_config(m)
    assert m.experts == 8 and m.vocab_size == 8192 and m.d_model <= 256


@pytest.mark.parametrize("spec, overrides, match", [
    ("configs/missing.py", [], "config file not found"),
    ("configs/tiny.txt", [], "config file not found"),
    ("tinyy", [], "unknown config 'tinyy'.*demo, (grids/[a-z]+, )*paper, tiny"),
    (TINY, ["--config.model.d_modle=3"], "unknown config field 'model.d_modle'.*fields of model: .*d_model"),
    (TINY, ["--config.optim.lr=3"], "unknown config field 'optim'"),
    (TINY, ["--config.model.experts=abc"], "config.model.experts=abc"),
    (TINY, ["--config.model.experts=2.5"], "config.model.experts"),
    (TINY, ["--experts=3"], "unrecognised override '--experts=3'"),
    (f"{PAPER}:d500_E8", [], "unknown paper config 'd500_E8'.*d512"),
    (f"{PAPER}:d512_E3", [], "unknown paper config 'd512_E3'"),
])
def test_bad_input_is_one_line_config_error(spec, overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(spec, overrides)
    assert "\n" not in str(info.value)


def test_packaged_names_and_repo_paths_load_the_same_files(tmp_path, monkeypatch):
    assert load_config("paper:d512_E8").to_dict() == load_config(f"{PAPER}:d512_E8").to_dict()
    monkeypatch.chdir(tmp_path)  # no configs/ here: the README's path falls back to the packaged copy
    assert load_config("configs/tiny.py").to_dict() == load_config(TINY).to_dict()
    not_py = tmp_path / "conf.txt"
    not_py.write_text("x")
    with pytest.raises(ConfigError, match="must be a Python file"):
        load_config(str(not_py))


def test_broken_config_file_is_named(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg=None):\n    return undefined_name\n")
    with pytest.raises(ConfigError, match="NameError") as info:
        load_config(str(bad))
    assert "\n" not in str(info.value)
