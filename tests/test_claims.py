"""Claim verdicts (moe_jax.scaling.claims) on synthetic sweeps whose truth is known: runs priced by the paper's
law (the claims hold, SPEC §4/§6) and by a law where experts only hurt (they must not)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from moe_jax.cli import main
from moe_jax.errors import UserError
from moe_jax.scaling import constants
from moe_jax.scaling.claims import Evidence, evaluate, load_evidence, to_markdown
from moe_jax.scaling.cli_claims import BEGIN, END, generated_block
from moe_jax.scaling.law import JointLaw
from moe_jax.scaling.shape_rule import PAPER_RULE

PAPER = dict(constants.JOINT_PAPER2025)
EXPERTS_HURT = dict(PAPER, delta=-0.3, omega=0.3)  # A(E), B(E) grow with E: an MoE is worse at every size


def _runs(coeffs: dict) -> pd.DataFrame:
    """A paper-shape grid (d512/d768/d1024 × E 1,2,4,8 × 1–8 B tokens) with the law's losses."""
    law, rows = JointLaw(**coeffs), []
    for d in (512, 768, 1024):
        for e in (1, 2, 4, 8):
            for tokens in (1e9, 2e9, 4e9, 8e9):
                n_act, n_total = float(PAPER_RULE.n_act(d)), float(PAPER_RULE.n_total(d, e))
                rows.append({"n_act": n_act, "n_total": n_total, "tokens": tokens, "experts": e,
                             "loss": float(law.loss(n_act, tokens, e)), "flops": 6 * n_act * tokens,
                             "d_model": d, "n_layers": d // 64, "kind": "branch", "run": f"d{d}_E{e}_T{tokens:.0e}"})
    return pd.DataFrame(rows)


def _evidence(coeffs: dict, gaps=(0.001, -0.002), rmse=0.006) -> Evidence:
    fit = {"law": "joint", "coefficients": coeffs, "rmse_train": rmse, "rmse_heldout": 0.004, "n_train": 38,
           "n_heldout": 10}
    pairs = [{"shape": "d768", "experts": 8, "tokens": t, "branch_loss": 3.0 + g, "control_loss": 3.0, "gap": g}
             for t, g in zip((4e9, 8e9), gaps)]
    reuse = {"pairs": pairs, "measured_token_ratio": 0.627, "analytic_token_ratio": 0.627,
             "measured_wall_ratio": 0.65, "measured_step_ratio": 0.63, "measured_tokens": 627,
             "independent_tokens": 1000, "wall_s": 65.0, "independent_wall_s": 100.0, "step_s": 63.0,
             "independent_step_s": 100.0}
    return Evidence(_runs(coeffs), fit, reuse)


def test_the_papers_law_makes_every_claim_hold():
    verdicts = {v.key: v for v in evaluate(_evidence(PAPER))}
    assert [v.holds for v in verdicts.values()] == [True, True, True, True]
    n_star = verdicts["fewer_params_more_tokens"].numbers["n_star"]
    assert all(a[j] > b[j] for a, b in zip(n_star, n_star[1:]) for j in range(3))  # SPEC §4 table: N* falls with E
    assert verdicts["fewer_params_more_tokens"].numbers["share"] == 1.0
    assert verdicts["memory_optimal_moe"].numbers["pairs_moe_wins"] > 0
    assert min(verdicts["e_times_tokens"].numbers["law_margins"]) > 0
    assert not any("|" in v.summary for v in verdicts.values())  # each summary is one markdown table cell


def test_a_law_where_experts_hurt_fails_the_moe_claims():
    verdicts = {v.key: v for v in evaluate(_evidence(EXPERTS_HURT))}
    assert verdicts["memory_optimal_moe"].holds is False
    assert verdicts["memory_optimal_moe"].numbers["pairs_moe_wins"] == 0
    assert verdicts["e_times_tokens"].holds is False
    assert min(verdicts["e_times_tokens"].numbers["law_margins"]) < -0.5  # E = 8 loses by far


def test_reuse_gap_is_judged_against_the_fits_scatter():
    assert evaluate(_evidence(PAPER, gaps=(0.001, 0.002)))[3].holds is True
    assert evaluate(_evidence(PAPER, gaps=(0.001, 0.05)))[3].holds is False  # ln(3.05/3) = 0.0165 > 0.006
    no_controls = _evidence(PAPER)
    no_controls.reuse = None
    assert evaluate(no_controls)[3].holds is None


def test_bootstrap_samples_give_the_share_that_agrees():
    ev = _evidence(PAPER)
    keys = list(PAPER)
    ev.fit["intervals"] = {"sample_keys": keys, "samples": [[PAPER[k] for k in keys], [EXPERTS_HURT[k] for k in keys]]}
    verdicts = {v.key: v for v in evaluate(ev)}
    assert verdicts["e_times_tokens"].numbers["bootstrap_agreement"] == 0.5
    assert "50% of bootstrap fits agree" in verdicts["e_times_tokens"].summary


def test_claims_cli_updates_the_marked_block(tmp_path, capsys):
    ev = _evidence(PAPER)
    ev.runs.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "fit.json").write_text(json.dumps(ev.fit))
    (tmp_path / "reuse.json").write_text(json.dumps(ev.reuse))
    doc = tmp_path / "doc.md"
    doc.write_text(f"# title\nhand-written\n{BEGIN}\nSTALE-TEXT\n{END}\nafter\n")
    assert main(["claims", "--dir", str(tmp_path), "--update", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# title\nhand-written\n") and text.endswith(f"{END}\nafter\n") and "STALE-TEXT" not in text
    assert generated_block(text) == to_markdown(load_evidence(tmp_path), evaluate(load_evidence(tmp_path)))
    capsys.readouterr()
    assert main(["claims", "--dir", str(tmp_path), "--json"]) == 0
    assert [v["holds"] for v in json.loads(capsys.readouterr().out)] == [True, True, True, True]


def test_claims_reads_its_evidence_from_and_updates_a_file_in_a_bucket(tmp_path, capsys, bucket):
    ev = _evidence(PAPER)
    for folder in (tmp_path / "local", bucket / "b" / "ev"):
        folder.mkdir(parents=True)
        ev.runs.to_csv(folder / "runs.csv", index=False)
        (folder / "fit.json").write_text(json.dumps(ev.fit))
        (folder / "reuse.json").write_text(json.dumps(ev.reuse))
    assert main(["claims", "--dir", str(tmp_path / "local")]) == 0
    local = capsys.readouterr().out
    assert main(["claims", "--dir", "gs://b/ev"]) == 0
    assert capsys.readouterr().out == local
    (bucket / "b" / "doc.md").write_text(f"{BEGIN}\nSTALE\n{END}\n")
    assert main(["claims", "--dir", "gs://b/ev", "--update", "gs://b/doc.md"]) == 0
    assert generated_block((bucket / "b" / "doc.md").read_text()) == local
    assert main(["claims", "--dir", "gs://b/none"]) == 2
    assert capsys.readouterr().err.strip().endswith("gs://b/none is not a directory with runs.csv and fit.json")


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "runs.csv does not exist"),
    (lambda d: (d / "runs.csv").write_text("n_act,tokens\n1,2\n"), "missing column"),
    (lambda d: (_runs(PAPER).to_csv(d / "runs.csv"), (d / "fit.json").write_text("{")), "cannot read"),
])
def test_bad_evidence_is_one_line(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        load_evidence(tmp_path)


def test_update_without_markers_is_refused(tmp_path, capsys):
    ev = _evidence(PAPER)
    ev.runs.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "fit.json").write_text(json.dumps(ev.fit))
    doc = tmp_path / "doc.md"
    doc.write_text("no markers\n")
    assert main(["claims", "--dir", str(tmp_path), "--update", str(doc)]) == 2
    assert "needs the markers" in capsys.readouterr().err and doc.read_text() == "no markers\n"
    assert np.isfinite(ev.runs["loss"]).all()


def test_term_ratios_say_what_experts_do_to_each_term_at_a_scale():
    from moe_jax.scaling.claims import PAPER_TYPICAL, expert_term_ratios

    assert all(x < 0 for x in expert_term_ratios(JointLaw(**PAPER), *PAPER_TYPICAL, 8))  # both terms shrink
    assert expert_term_ratios(JointLaw(**EXPERTS_HURT), *PAPER_TYPICAL, 8)[0] > 0  # δ < 0: A(E) grows with E
    assert expert_term_ratios(JointLaw(**dict(PAPER, omega=-1.0)), *PAPER_TYPICAL, 8)[1] > 0  # B(E) grows faster
    assert expert_term_ratios(JointLaw(**PAPER), 1e8, 1e10, 1) == (0.0, 0.0)
