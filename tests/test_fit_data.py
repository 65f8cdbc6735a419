"""Loading and validating the runs CSV for `moe-jax fit`: every bad input is a one-line UserError."""

from __future__ import annotations

import numpy as np
import pytest

from moe_jax.errors import UserError
from moe_jax.scaling.fit_data import load_runs, lowest_loss_mask, paper_weights


def write(tmp_path, text, name="runs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def joint_csv(n=14, experts=(1, 8)):
    rows = ["n_act,tokens,loss,experts,notes"]
    for i in range(n):
        rows.append(f"{1e8 * (i + 1)},{2e9 * (i + 1)},{3.0 - 0.05 * i},{experts[i % len(experts)]},x")
    return "\n".join(rows) + "\n"


def test_loads_columns_ignores_others_and_drops_outliers(tmp_path):
    text = "n_act,tokens,loss,outlier,extra\n1e8,2e9,3.1,0,a\n2e8,4e9,2.9,1,b\n" + "".join(
        f"{3e8 + i * 1e7},{6e9 + i * 1e8},{2.8 - i * 0.01},0,c\n" for i in range(6)
    )
    runs = load_runs(write(tmp_path, text), "chinchilla")
    assert len(runs) == 7
    assert 2e8 not in runs.n_act
    np.testing.assert_array_equal(runs.experts, 1.0)


def test_joint_csv_loads(tmp_path):
    runs = load_runs(write(tmp_path, joint_csv()), "joint")
    assert len(runs) == 14 and set(runs.experts) == {1.0, 8.0}


@pytest.mark.parametrize(
    "text, kind, fragment",
    [
        ("n_act,token,loss\n1,2,3\n", "chinchilla", "missing column 'tokens' (did you mean 'token'?)"),
        ("n_act,tokens,loss\n1,2,3\n", "joint", "missing column 'experts'"),
        ("n_act,tokens,loss\n" + "1e8,2e9,3\n" * 6 + "1e8,nan,3\n", "chinchilla", "row 8 column 'tokens'"),
        ("n_act,tokens,loss\n" + "1e8,2e9,3\n" * 6 + "1e8,2e9,-1\n", "chinchilla", "row 8 column 'loss'"),
        ("n_act,tokens,loss\n" + "1e8,2e9,3\n" * 6 + "inf,2e9,3\n", "chinchilla", "row 8 column 'n_act'"),
        ("n_act,tokens,loss\n" + "1e8,2e9,3\n" * 6 + "abc,2e9,3\n", "chinchilla", "'abc'"),
        ("n_act,tokens,loss\n1e8,2e9,3\n1e8,2e9,3\n", "chinchilla", "2 usable run(s) but a chinchilla fit has 5 parameters"),
        (joint_csv(experts=(4,)), "joint", "at least two expert counts"),
        ("", "chinchilla", "cannot read runs CSV"),
    ],
)
def test_bad_csv_is_a_one_line_user_error(tmp_path, text, kind, fragment):
    with pytest.raises(UserError) as err:
        load_runs(write(tmp_path, text), kind)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_law(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_runs(tmp_path / "nope.csv", "chinchilla")
    with pytest.raises(UserError, match="unknown law 'moe'"):
        load_runs(write(tmp_path, joint_csv()), "moe")


def test_binary_file_is_unreadable(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(UserError, match="cannot read runs CSV"):
        load_runs(path, "chinchilla")


def test_heldout_and_weights_errors():
    with pytest.raises(UserError, match="held-out size"):
        lowest_loss_mask(np.ones(5), 5)
    with pytest.raises(UserError, match="loss > 1"):
        paper_weights(np.array([2.0, 0.9]))
