"""Verdicts on the paper's headline claims (SPEC §6) from a sweep's own runs, fit and reuse report.

    claims = evaluate(load_evidence("docs/reproduction"))   # runs.csv, fit.json, reuse.json
    print(to_markdown(claims))                               # the block docs/reproduction.md carries

Each claim is judged twice where the data allow: by the fitted joint law inside the fitted range (the
paper's own method) with the share of bootstrap resamples that agree, and directly by pairs of runs.
Every number comes from the three files, so the report regenerates exactly from committed data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from moe_jax.errors import UserError
from moe_jax.paths import open_existing, user_path
from moe_jax.scaling import constants, optimal
from moe_jax.scaling.counting import format_count
from moe_jax.scaling.fit_data import read_csv
from moe_jax.scaling.law import law_from_dict
from moe_jax.scaling.shape_rule import PAPER_RULE, ShapeRule

PAPER_RMSE = {"train": 0.0062, "heldout": 0.0039}  # SPEC §2, log L, 260 train / 10 held-out runs
SIGNED_KEYS = ("delta", "gamma", "omega", "zeta")  # the expert-dependence coefficients whose signs carry the claims
PAPER_TYPICAL = (math.sqrt(78.7e6 * 2715.9e6), math.sqrt(0.5e9 * 80e9))  # geometric-mean N_act, D of SPEC §5's grid
EQUAL_TOTAL_TOLERANCE = 0.25
JUDGED_BUDGETS = 121  # log-spaced budgets over the runs' FLOPs range on which the law is judged  # runs "at equal total parameters" when their N_total differ by at most this share


@dataclass
class Evidence:
    """What the claims are judged on: the runs table, the fit JSON and (optionally) the reuse report."""

    runs: pd.DataFrame
    fit: dict
    reuse: dict | None = None

    @cached_property
    def law(self):
        return law_from_dict(self.fit["coefficients"], source="fit.json")

    @cached_property
    def rule(self) -> ShapeRule:
        data = self.fit.get("shape_rule")
        return PAPER_RULE if data is None else ShapeRule.from_dict(data, source="fit.json")

    @cached_property
    def experts(self) -> list[int]:
        return sorted({int(e) for e in self.runs["experts"]})

    @cached_property
    def trusted_flops(self) -> tuple[np.ndarray, np.ndarray]:
        """Budgets F [G] over the runs' FLOPs range and a mask [G]: where the compute-optimal (N*, D*) of every
        E lies inside the runs' N_act and token ranges, i.e. where the law interpolates."""
        f = self.runs["flops"].to_numpy(np.float64)
        grid = np.geomspace(f.min(), f.max(), JUDGED_BUDGETS)
        n, d = self.runs["n_act"].to_numpy(np.float64), self.runs["tokens"].to_numpy(np.float64)
        inside = np.ones(JUDGED_BUDGETS, bool)
        for e in self.experts:
            n_star, d_star, _ = optimal.compute_optimal_closed_form(self.law, grid, e)
            inside &= (n_star >= n.min()) & (n_star <= n.max()) & (d_star >= d.min()) & (d_star <= d.max())
        return grid, inside

    @cached_property
    def flops_points(self) -> tuple[float, float, float]:
        """Where the law is judged: the smallest, geometric-mean and largest budget of the trusted range
        (trusted_flops), or of the runs' FLOPs when no budget keeps every optimum inside the runs."""
        grid, inside = self.trusted_flops
        f = grid[inside] if inside.any() else grid
        return float(f.min()), float(np.exp(np.log(f).mean())), float(f.max())

    @cached_property
    def bootstrap_laws(self) -> list:
        boot = (self.fit.get("intervals") or {})
        keys, samples = boot.get("sample_keys"), boot.get("samples") or []
        return [law_from_dict(dict(zip(keys, row)), source="fit.json bootstrap") for row in samples] if keys else []


@dataclass
class Verdict:
    """One claim: does it hold here, the one-line reason with numbers, and markdown detail."""

    key: str
    claim: str
    holds: bool | str | None  # True, "partly", False, or None: the data cannot say
    summary: str
    details: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)


# ---------------------------------------------------------------- inputs


def _read_json(path: Path, what: str) -> dict:
    try:
        with open_existing(path) as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_evidence(directory) -> Evidence:
    """runs.csv (`moe-jax sweep collect`), fit.json (`moe-jax fit --out`) and, if present, reuse.json
    (`moe-jax reuse-report --json`) from one directory."""
    directory = user_path(directory)  # local or gs://
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory with runs.csv and fit.json")
    csv = directory / "runs.csv"
    runs = read_csv(csv, missing=f"{csv} does not exist: write it with `moe-jax sweep collect --out`",
                    unreadable=f"cannot read {csv}")
    need = ("n_act", "n_total", "tokens", "experts", "loss", "flops")
    missing = [c for c in need if c not in runs.columns]
    if missing:
        raise UserError(f"{csv}: missing column(s) {', '.join(missing)}; expected `moe-jax sweep collect` output")
    fit = _read_json(directory / "fit.json", "write it with `moe-jax fit runs.csv --law joint --out DIR`")
    if fit.get("law") != "joint":
        raise UserError(f"{directory / 'fit.json'}: the claims need a joint law fit, got {fit.get('law')!r}")
    reuse_path = directory / "reuse.json"
    reuse = _read_json(reuse_path, "") if reuse_path.exists() else None
    return Evidence(runs, fit, reuse)


# ---------------------------------------------------------------- the claims


def _agreement(laws, test) -> float | None:
    """Share of bootstrap laws for which `test(law)` is true (None without bootstrap samples)."""
    if not laws:
        return None
    with np.errstate(all="ignore"):
        return float(np.mean([bool(test(law)) for law in laws]))


def _share(x: float | None) -> str:
    return "no bootstrap" if x is None else f"{x:.0%} of bootstrap fits agree"


def _optima(law, flops, experts) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal N* and D* [E, G] for budgets `flops` [G]."""
    rows = [optimal.compute_optimal_closed_form(law, flops, e)[:2] for e in experts]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def _ordered(law, flops, experts) -> np.ndarray:
    """[G]: N* strictly falls and D* strictly rises from each E to the next, at each budget."""
    n, d = _optima(law, np.atleast_1d(flops), experts)
    return np.all(np.diff(n, axis=0) < 0, axis=0) & np.all(np.diff(d, axis=0) > 0, axis=0)


def fewer_params_more_tokens(ev: Evidence) -> Verdict:
    """SPEC §6.1: at a fixed budget, N* falls and D* rises as E grows — under the fitted law, over the budgets
    where every E's optimum lies inside the runs (trusted_flops)."""
    law, experts = ev.law, ev.experts
    grid, inside = ev.trusted_flops
    judged = grid[inside] if inside.any() else grid
    ok = _ordered(law, judged, experts)
    share = float(ok.mean())
    holds = True if ok.all() else ("partly" if ok.any() else False)
    points = ev.flops_points
    n, d = _optima(law, np.array(points), experts)
    rows = ["| E | " + " | ".join(f"N*, D* at F = {f:.3g}" for f in points) + " |", "|---|" + "---|" * len(points)]
    rows += [f"| {e} | " + " | ".join(f"{format_count(n[i, j])}, {format_count(d[i, j])}" for j in range(len(points)))
             + " |" for i, e in enumerate(experts)]
    where = ("every budget of the trusted range" if ok.all() else
             f"budgets from {judged[ok].min():.3g} to {judged[ok].max():.3g} FLOPs" if ok.any() else "no budget")
    rows += ["", f"Judged over {len(judged)} budgets {judged.min():.3g}–{judged.max():.3g} FLOPs, "
                 + ("where every E's compute-optimal N* and D* lie inside the runs' N_act and token ranges."
                    if inside.any() else "(the runs' FLOPs range: no budget keeps every optimum inside the runs).")]
    agree = _agreement(ev.bootstrap_laws, lambda lw: bool(_ordered(lw, points[1], experts)[0]))
    lo, hi = 0, len(experts) - 1
    summary = (f"N* falls and D* rises with E at {share:.0%} of the judged budgets ({where}); at F = {points[1]:.3g} "
               f"N* goes {format_count(n[lo, 1])} → {format_count(n[hi, 1])} and D* {format_count(d[lo, 1])} → "
               f"{format_count(d[hi, 1])} from E={experts[lo]} to E={experts[hi]} ({_share(agree)})")
    return Verdict("fewer_params_more_tokens", "More experts → smaller compute-optimal N and more tokens", holds,
                   summary, rows, {"flops": points, "share": share, "n_star": n.tolist(), "d_star": d.tolist(),
                                   "bootstrap_agreement": agree})


def _moe_dense_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """Every (MoE run, dense run) pair, columns suffixed _moe / _dense, with margin = dense loss − MoE loss."""
    moe, dense = runs[runs["experts"] > 1], runs[runs["experts"] == 1]
    pairs = moe.merge(dense, how="cross", suffixes=("_moe", "_dense"))
    pairs["margin"] = pairs["loss_dense"] - pairs["loss_moe"]
    return pairs


def _dominating_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """(MoE run, dense run) pairs where the MoE has no more total parameters and no more FLOPs."""
    pairs = _moe_dense_pairs(runs)
    keep = (pairs["n_total_moe"] <= pairs["n_total_dense"]) & (pairs["flops_moe"] <= pairs["flops_dense"])
    return pairs[keep].sort_values("margin", ascending=False)


def _pair_table(pairs: pd.DataFrame, column: str) -> list[str]:
    """Markdown rows of (MoE, dense) pairs: run, N_total, `column` ("flops" or "tokens"), loss each, and margin."""
    show = (lambda x: f"{x:.3g}") if column == "flops" else format_count
    title = "FLOPs" if column == "flops" else column
    rows = [f"| MoE run | N_total | {title} | loss | dense run | N_total | {title} | loss | dense − MoE |",
            "|---|---|---|---|---|---|---|---|---|"]
    for _, p in pairs.iterrows():
        moe, dense = (f"{p[f'run_{side}']} | {format_count(p[f'n_total_{side}'])} | {show(p[f'{column}_{side}'])} | "
                      f"{p[f'loss_{side}']:.4f}" for side in ("moe", "dense"))
        rows.append(f"| {moe} | {dense} | {p['margin']:+.4f} |")
    return rows


def memory_optimal_moe(ev: Evidence) -> Verdict:
    """SPEC §6.2: under a fixed total-parameter budget an MoE on more tokens beats dense.

    Law: the memory-constrained optimum over the rule's shapes at each dense grid model's N_total and each
    of the runs' FLOPs points. Runs: MoE runs with ≤ the total parameters and ≤ the FLOPs of a dense run.
    """
    law, rule, experts, points = ev.law, ev.rule, ev.experts, ev.flops_points
    dense = ev.runs[ev.runs["experts"] == 1].drop_duplicates("n_total").sort_values("n_total")
    memories = dense["n_total"].to_numpy(np.float64)
    rows = ["| memory (N_total) | " + " | ".join(f"F = {f:.3g}" for f in points) + " |",
            "|---|" + "---|" * len(points)]
    wins, best_cell = 0, None
    for m in memories:
        cells = []
        for f in points:
            try:
                opt = optimal.memory_optimal(law, f, m, experts, shape=rule)
            except UserError:
                cells.append("—")
                continue
            dense_loss = next((c.loss for c in opt.per_expert if c.experts == 1), math.inf)
            margin = dense_loss - opt.best.loss
            if opt.best.experts > 1:
                wins += 1
                if best_cell is None or margin > best_cell[2]:
                    best_cell = (f, m, margin, opt.best.experts)
            cells.append(f"E={opt.best.experts} ({-margin:+.4f})" if opt.best.experts > 1 else "E=1")
        rows.append(f"| {format_count(m)} | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("Cells: the loss-optimal E under the law and, in brackets, its loss minus the best dense model's "
                "(negative = MoE better).")
    pairs = _dominating_pairs(ev.runs)
    won = int((pairs["margin"] > 0).sum())
    rows += ["", f"Runs: {len(pairs)} (MoE, dense) pairs where the MoE has no more total parameters and no more "
                 f"FLOPs; the MoE has the lower held-out loss in {won}. The largest margins:", ""]
    rows += _pair_table(pairs.head(5), "flops")
    agree = None
    if best_cell is not None:
        f, m, _, _ = best_cell
        agree = _agreement(ev.bootstrap_laws,
                           lambda lw: optimal.memory_optimal(lw, f, m, experts, shape=rule).best.experts > 1)
    holds = best_cell is not None and won > 0
    if best_cell is None:
        summary = f"the law picks dense in every cell; MoE wins {won} of {len(pairs)} dominating run pairs"
    else:
        f, m, margin, e = best_cell
        summary = (f"the law picks an MoE in {wins} of {len(memories) * len(points)} (memory, FLOPs) cells, most "
                   f"clearly E={e} at N_total {format_count(m)} and F = {f:.3g} ({margin:.4f} below dense; "
                   f"{_share(agree)}); in the runs, MoE beats a dense model with at least its memory and compute "
                   f"in {won} of {len(pairs)} pairs")
    return Verdict("memory_optimal_moe", "Under a fixed total-parameter budget, an MoE on more tokens beats dense",
                   holds, summary, rows, {"law_cells_moe": wins, "pairs": len(pairs), "pairs_moe_wins": won,
                                          "bootstrap_agreement": agree})


def _equal_total_run_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """(MoE, dense) run pairs with N_total within EQUAL_TOTAL_TOLERANCE and the MoE on E× the dense tokens."""
    pairs = _moe_dense_pairs(runs)
    close = (pairs["n_total_moe"] / pairs["n_total_dense"] - 1).abs() <= EQUAL_TOTAL_TOLERANCE
    e_times = np.isclose(pairs["tokens_moe"], pairs["experts_moe"] * pairs["tokens_dense"], rtol=1e-6)
    return pairs[close & e_times].sort_values(["experts_moe", "tokens_dense"])


def e_times_tokens(ev: Evidence) -> Verdict:
    """SPEC §4/§6.3 rule of thumb: at equal total parameters, E ≤ 8 on E× the compute-optimal dense tokens
    beats the compute-optimal dense model (law at the judged budgets, flops_points; and pairs of runs)."""
    law, rule = ev.law, ev.rule
    moe_experts = [e for e in ev.experts if 1 < e <= 8]
    budgets = ev.flops_points
    rows = ["| F (dense N*, D*) | " + " | ".join(f"E={e}" for e in moe_experts) + " |",
            "|---|" + "---|" * len(moe_experts)]
    margins = []
    for f in budgets:
        cells, dense = [], None
        for e in moe_experts:
            c = optimal.equal_total_params_comparison(law, f, e, shape=rule)
            dense = c["dense"]
            margins.append(c["margin"])
            cells.append(f"{c['margin']:+.4f} ({c['moe']['flops'] / c['dense']['flops']:.2f}× FLOPs)")
        rows.append(f"| {f:.3g} ({format_count(dense['n_act'])}, {format_count(dense['tokens'])}) | "
                    + " | ".join(cells) + " |")
    rows += ["", "Cells: dense loss minus MoE loss under the law (positive = MoE better) and the MoE's FLOPs "
                 "relative to the dense model's."]
    pairs = _equal_total_run_pairs(ev.runs)
    won = int((pairs["margin"] > 0).sum())
    rows += ["", f"Runs: {len(pairs)} pairs with N_total within ±{EQUAL_TOTAL_TOLERANCE:.0%} and the MoE on E× "
                 f"the dense run's tokens (the dense runs are grid points, not compute-optimal); MoE wins {won}:", ""]
    rows += _pair_table(pairs, "tokens")
    holds = bool(margins) and min(margins) > 0
    agree = _agreement(ev.bootstrap_laws, lambda lw: all(
        optimal.equal_total_params_comparison(lw, f, e, shape=rule)["margin"] > 0 for f in budgets for e in moe_experts))
    summary = (f"under the law the MoE wins in {sum(m > 0 for m in margins)} of {len(margins)} cases "
               f"(E ∈ {{{', '.join(map(str, moe_experts))}}} at {len(budgets)} budgets of the trusted range; margins {min(margins):+.4f} … {max(margins):+.4f}; {_share(agree)}); in the runs it wins "
               f"{won} of {len(pairs)} equal-total pairs")
    return Verdict("e_times_tokens", "E ≤ 8 on E× the dense compute-optimal tokens beats compute-optimal dense",
                   holds, summary, rows, {"law_margins": margins, "pairs": len(pairs), "pairs_moe_wins": won,
                                          "bootstrap_agreement": agree})


def reuse_assumption(ev: Evidence) -> Verdict:
    """SPEC §5: a cooldown branch from a constant-LR trunk ≈ an independent run with its own schedule.

    Judged against the fit's own scatter: it holds when every |ln(L_branch / L_control)| is below the fit's
    train RMSE of log L (the reuse error is then invisible to the law)."""
    claim = "Checkpoint reuse: a branch ≈ an independent run"
    pairs = (ev.reuse or {}).get("pairs") or []
    if not pairs:
        return Verdict("reuse", claim, None, "no branch/control pairs (reuse.json missing or without controls)")
    rmse = float(ev.fit["rmse_train"])
    rows = ["| run | tokens | branch | control | gap | ln ratio |", "|---|---|---|---|---|---|"]
    logs = []
    for p in pairs:
        ln_ratio = math.log(p["branch_loss"] / p["control_loss"])
        logs.append(ln_ratio)
        rows.append(f"| {p['shape']} E={p['experts']} | {format_count(p['tokens'])} | {p['branch_loss']:.4f} | "
                    f"{p['control_loss']:.4f} | {p['gap']:+.4f} | {ln_ratio:+.4f} |")
    holds = max(abs(x) for x in logs) < rmse
    r, gaps = ev.reuse, [p["gap"] for p in pairs]
    summary = (f"branch − control {', '.join(f'{gap:+.4f}' for gap in gaps)} nats at "
               f"{', '.join(format_count(p['tokens']) for p in pairs)} tokens: ln(branch ÷ control) within ±"
               f"{max(abs(x) for x in logs):.4f} vs the fit's train RMSE {rmse:.4f}; the sweep trained "
               f"{r['measured_token_ratio']:.3f}× the tokens (analytic {r['analytic_token_ratio']:.3f}×) in "
               f"{r['measured_wall_ratio']:.3f}× the wall time of independent runs")
    return Verdict("reuse", claim, holds, summary, rows, {"ln_ratios": logs, "rmse_train": rmse})


def evaluate(ev: Evidence) -> list[Verdict]:
    """All four verdicts, in SPEC §6 order."""
    return [fewer_params_more_tokens(ev), memory_optimal_moe(ev), e_times_tokens(ev), reuse_assumption(ev)]


# ---------------------------------------------------------------- the fit, next to the paper's


def fit_table(ev: Evidence) -> list[str]:
    """Markdown: coefficients with bootstrap intervals next to the paper's; RMSEs; signs of δ, γ, ω, ζ."""
    fit, paper = ev.fit, constants.JOINT_PAPER2025
    iv = (fit.get("intervals") or {}).get("coefficients", {})
    n_boot = (fit.get("intervals") or {}).get("n_boot", 0)
    rows = [f"| coefficient | this fit | 95 % interval ({n_boot} bootstrap resamples) | paper |",
            "|---|---|---|---|"]
    for k, v in fit["coefficients"].items():
        band = f"[{iv[k][0]:.4g}, {iv[k][1]:.4g}]" if k in iv else "—"
        rows.append(f"| {k} | {v:.4g} | {band} | {paper[k]:.4g} |")
    heldout = fit.get("rmse_heldout")
    rows += ["", f"RMSE of log L: train {fit['rmse_train']:.4f} on {fit['n_train']} runs, held-out "
                 f"{'—' if heldout is None else f'{heldout:.4f}'} on the {fit['n_heldout']} lowest-loss runs "
                 f"(paper: {PAPER_RMSE['train']} / {PAPER_RMSE['heldout']} on 260 / 10).", "",
             "| sign | this fit | interval excludes 0 | paper | same sign |", "|---|---|---|---|---|"]
    for k in SIGNED_KEYS:
        v = fit["coefficients"][k]
        sure = "yes" if k in iv and (iv[k][0] > 0 or iv[k][1] < 0) else ("no" if k in iv else "—")
        rows.append(f"| {k} | {v:+.4g} | {sure} | {paper[k]:+.4g} | {'yes' if v * paper[k] > 0 else 'no'} |")
    rows += ["", "δ and γ (and ω and ζ) trade off against each other: δ is the expert effect at N = 1, far from any "
                 "run. What the data pin down is the effect at their own scale: how the largest E changes each term "
                 "of the loss against dense, at the runs' geometric-mean N_act and tokens (the paper's law at its "
                 "grid's; negative = the MoE's term is smaller):", ""] + term_ratio_table(ev)
    return rows


def sweep_summary(ev: Evidence) -> list[str]:
    """Markdown: what the sweep ran and what checkpoint reuse saved (runs.csv and reuse.json)."""
    runs, r = ev.runs, ev.reuse
    kinds = runs["kind"].value_counts() if "kind" in runs.columns else {}
    lines = [f"{len(runs)} runs in runs.csv ({kinds.get('branch', 0)} cooldown branches, {kinds.get('control', 0)} "
             f"controls): N_act {format_count(runs['n_act'].min())}–{format_count(runs['n_act'].max())}, "
             f"E ∈ {{{', '.join(map(str, ev.experts))}}}, {format_count(runs['tokens'].min())}–"
             f"{format_count(runs['tokens'].max())} tokens, {runs['flops'].min():.3g}–{runs['flops'].max():.3g} FLOPs."]
    if r:
        lines += ["", "| checkpoint reuse | with reuse | independent runs | ratio | ratio ÷ analytic token ratio |",
                  "|---|---|---|---|---|",
                  f"| tokens | {r['measured_tokens']:,} | {r['independent_tokens']:,} | {r['measured_token_ratio']:.4f} "
                  f"| {r['measured_token_ratio'] / r['analytic_token_ratio']:.4f} |",
                  f"| wall time (s) | {r['wall_s']:,.0f} | {r['independent_wall_s']:,.0f} (priced) | "
                  f"{r['measured_wall_ratio']:.4f} | {r['measured_wall_ratio'] / r['analytic_token_ratio']:.4f} |",
                  f"| time in training steps (s) | {r['step_s']:,.0f} | {r['independent_step_s']:,.0f} (priced) | "
                  f"{r['measured_step_ratio']:.4f} | {r['measured_step_ratio'] / r['analytic_token_ratio']:.4f} |",
                  "", f"Analytic token ratio ((1 − f)·T_max + f·ΣT)/ΣT = {r['analytic_token_ratio']:.4f}. Independent "
                  "runs are priced from each group's trunk (its fixed start-up, compile and eval seconds plus its "
                  "seconds per token); the controls are measured independent runs."]
    return lines


def expert_term_ratios(law, n_act: float, tokens: float, experts: int) -> tuple[float, float]:
    """ln(term(E) / term(1)) of the N-term A(E)·N^−α(E) and of the D-term B(E)·D^−β(E) at one scale:
    what `experts` experts do to each term (negative = they shrink it). Unlike δ alone (the effect at N = 1,
    far from any run) this is pinned down by data at that scale."""
    one, many = law.per_expert(1), law.per_expert(experts)
    n_term = math.log(many.A / one.A) - (many.alpha - one.alpha) * math.log(n_act)
    d_term = math.log(many.B / one.B) - (many.beta - one.beta) * math.log(tokens)
    return n_term, d_term


def term_ratio_table(ev: Evidence) -> list[str]:
    """Markdown: the E_max-vs-dense term ratios at the runs' typical scale (with bootstrap band) and the paper's."""
    n_bar = float(np.exp(np.log(ev.runs["n_act"]).mean()))
    d_bar = float(np.exp(np.log(ev.runs["tokens"]).mean()))
    e = max(ev.experts)
    ours = expert_term_ratios(ev.law, n_bar, d_bar, e)
    paper = expert_term_ratios(law_from_dict(constants.JOINT_PAPER2025), *PAPER_TYPICAL, e)
    with np.errstate(all="ignore"):
        boot = [expert_term_ratios(lw, n_bar, d_bar, e) for lw in ev.bootstrap_laws]
    rows = [f"| ln(term at E={e} ÷ dense) | this fit (N̄ {format_count(n_bar)}, D̄ {format_count(d_bar)}) | 95 % band | "
            f"paper (N̄ {format_count(PAPER_TYPICAL[0])}, D̄ {format_count(PAPER_TYPICAL[1])}) |", "|---|---|---|---|"]
    for i, name in enumerate(("N-term A(E)·N̄^−α(E)", "D-term B(E)·D̄^−β(E)")):
        band = "—"
        if boot:
            lo, hi = np.percentile([b[i] for b in boot], [2.5, 97.5])
            band = f"[{lo:+.3f}, {hi:+.3f}]"
        rows.append(f"| {name} | {ours[i]:+.3f} | {band} | {paper[i]:+.3f} |")
    return rows


def to_markdown(ev: Evidence, verdicts: list[Verdict]) -> str:
    """The generated block of docs/reproduction.md: sweep, fit table, verdict table, then each claim's detail."""
    word = {True: "**holds**", "partly": "**holds in part**", False: "**does not hold**", None: "cannot say"}
    out = ["### The sweep", ""] + sweep_summary(ev) + ["", "### The fit", ""] + fit_table(ev)
    out += ["", "### Verdicts", "", "| claim | verdict | evidence |", "|---|---|---|"]
    out += [f"| {v.claim} | {word[v.holds]} | {v.summary} |" for v in verdicts]
    for v in verdicts:
        out += ["", f"#### {v.claim}", "", v.summary + ".", ""] + v.details
    return "\n".join(out) + "\n"
