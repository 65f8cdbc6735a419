"""The joint law, Ê and counting against SPEC §1 and §3 published numbers."""

import json
import math

import numpy as np
import pytest

from moe_jax.errors import UserError
from moe_jax.scaling import constants, counting
from moe_jax.scaling.law import JointLaw, load_law


@pytest.mark.parametrize("experts, expected", [(1, 3.0165), (4, 2.9511), (32, 2.8264)])
def test_joint_law_sanity_values(experts, expected):
    law = load_law("paper2025")
    assert law.loss(1e8, 1e10, experts) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "experts, row",
    [
        (1, (2.0830, 30.3640, 0.181740, 53.9838, 0.196502)),
        (8, (8.8217, 21.8330, 0.167597, 119.9126, 0.233814)),
        (32, (29.7123, 16.5424, 0.155698, 234.6726, 0.265205)),
    ],
)
def test_per_expert_view(experts, row):
    law = load_law("paper2025")
    got = (law.e_hat(experts), *law.coefficients(experts))
    for g, want in zip(got, row):
        assert float(g) == pytest.approx(want, rel=2e-5, abs=2e-6)


def test_vectorised_prediction_matches_scalar():
    law = load_law("paper2025")
    e = np.array([1, 2, 4, 8, 16, 32])
    vec = law.loss(3e8, 2e10, e)
    assert vec.shape == (6,)
    assert [float(law.loss(3e8, 2e10, int(x))) for x in e] == pytest.approx(list(vec), rel=1e-12)
    # More experts help at fixed N, D (the paper's headline direction).
    assert np.all(np.diff(vec) < 0)


def test_per_expert_law_reduces_joint():
    law = load_law("paper2025")
    chin = law.per_expert(8)
    assert chin.loss(5e8, 3e10) == pytest.approx(float(law.loss(5e8, 3e10, 8)), rel=1e-12)


def test_chinchilla_named_sets():
    assert load_law("hoffmann2022").loss(70e9, 1.4e12) == pytest.approx(1.9367, abs=2e-3)
    assert load_law("epoch2024").C == pytest.approx(1.8172)


def test_load_law_from_fit_json(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"coefficients": constants.JOINT_PAPER2025, "objective": 1.0}))
    law = load_law(str(path))
    assert isinstance(law, JointLaw)
    assert law.loss(1e8, 1e10, 4) == pytest.approx(2.9511, abs=1e-4)


@pytest.mark.parametrize(
    "content, fragment",
    [("{not json", "cannot read"), ('{"A": 1}', "missing coefficient"), ('{"A": "x", "alpha": 1, "B": 1, "beta": 1, "C": 1}', "not a number")],
)
def test_load_law_bad_files(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        load_law(str(path))


def test_unknown_set_is_user_error():
    with pytest.raises(UserError, match="unknown coefficient set"):
        load_law("paper2024")


# ---------------------------------------------------------------- counting (SPEC §3, §5)

SPEC_N_ACT_M = {
    "d512": 78.7, "d576": 96.7, "d640": 117.6, "d704": 141.6, "d768": 169.2, "d832": 200.6,
    "d1024": 321.0, "d1152": 426.3, "d1280_L16": 469.4, "d1280": 554.6, "d1408_L21": 682.7,
    "d1408": 708.5, "d1536": 890.5, "d1664": 1103.1, "d1792": 1349.0, "d1920": 1630.7, "d2304": 2715.9,
}


@pytest.mark.parametrize("name", sorted(SPEC_N_ACT_M))
def test_paper_shapes_n_act(name):
    d, layers, _ = constants.PAPER_SHAPES[name]
    assert counting.paper_n_act(d, layers) / 1e6 == pytest.approx(SPEC_N_ACT_M[name], abs=0.051)


def test_n_total_and_expert_growth():
    assert counting.paper_n_total(1024, 16, 32) / 1e9 == pytest.approx(5.00, abs=0.005)
    step = counting.paper_n_total(1024, 16, 5) - counting.paper_n_total(1024, 16, 4)
    assert step == 9 * 1024**2 * 16


def test_exact_shape_counts_differ_from_paper_only_by_norms():
    shape = counting.ModelShape.paper(512, experts=8)
    c = shape.counts()
    assert c["n_act"] - c["n_norm"] == counting.paper_n_act(512, 8)
    assert c["n_total"] - c["n_norm"] == counting.paper_n_total(512, 8, 8)
    assert c["n_router"] == 512 * 8 * 8
    assert counting.ModelShape.paper(512, experts=1).counts()["n_router"] == 0


def test_lr_rule_and_flops():
    n = counting.paper_n_act(1024, 16)
    assert counting.lr_for(n, 1) == pytest.approx(math.exp(8.391640956234012 - 0.8121798244457074 * math.log(n)))
    assert counting.lr_for(n, 16) == pytest.approx(counting.lr_for(n, 1) / 2)
    assert counting.training_flops(1e8, 1e10) == 6e18
    assert counting.inference_flops(1e8, 10) == 2e9
    assert counting.paper_kv_params_per_token(1024, 16) == 2 * 16 * 1024


@pytest.mark.parametrize("text, bytes_", [("24GB", 24e9), ("80 GB", 80e9), ("640gb", 640e9), ("1GiB", 2**30), ("1e9", 1e9)])
def test_parse_memory(text, bytes_):
    assert counting.parse_memory(text) == bytes_
    assert counting.memory_in_params(counting.parse_memory("24GB"), 2) == 12e9


@pytest.mark.parametrize("text", ["", "GB", "-5GB", "80 apples", "0GB"])
def test_parse_memory_rejects(text):
    with pytest.raises(UserError):
        counting.parse_memory(text)
