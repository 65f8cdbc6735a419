"""What checkpoint reuse saved, and what it cost in loss (`moe-jax reuse-report --dir D`).

Tokens: with one trunk per (shape, E) to (1 − f)·T_max and a branch per budget from (1 − f)·T to T,
a group trains (1 − f)·T_max + f·ΣT tokens instead of ΣT (SPEC §5: 0.37× for the paper's 13 budgets).
The measured ratio counts what the runs trained themselves (summary.json tokens minus the branch point).
Wall time: the runs' own time (the loop's wall_time_s, branches minus what they inherited; and the time in
training steps alone, from metrics.jsonl) against independent runs priced from each group's trunk: its
fixed start-up cost plus its seconds per token. A control is a measured independent run: its wall time
is shown next to the priced one.
Loss: each control (an independent run with its own trapezoidal schedule) against the branch of the same
(shape, E, T).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from moe_jax.errors import UserError


def _groups(specs) -> dict:
    """{(shape, E): {'trunk': spec, 'branches': [spec]}} of the reused runs (controls left out)."""
    groups = defaultdict(lambda: {"trunk": None, "branches": []})
    for spec in specs:
        if spec.kind == "trunk":
            groups[(spec.shape, spec.experts)]["trunk"] = spec
        elif spec.kind == "branch":
            groups[(spec.shape, spec.experts)]["branches"].append(spec)
    return groups


def token_ratio(specs) -> dict:
    """Analytic tokens of the plan: Σ((1 − f)·T_max + f·ΣT) with reuse vs ΣT independent, and their ratio."""
    reuse = independent = 0
    for group in _groups(specs).values():
        budgets = [b.budget for b in group["branches"]]
        if not budgets:
            continue
        keep = min(b.start_tokens / b.budget for b in group["branches"])  # 1 − f
        reuse += keep * max(budgets) + (1 - keep) * sum(budgets)
        independent += sum(budgets)
    return {"reuse_tokens": int(round(reuse)), "independent_tokens": independent,
            "ratio": reuse / independent if independent else float("nan")}


def _independent_cost(trunk_result: dict, budget: int) -> tuple[float, float]:
    """(wall s, step s) an independent run to `budget` would take, priced from the trunk (also a run from
    scratch): its fixed cost (start-up, compile, eval) plus `budget` tokens at its seconds per token."""
    per_token = trunk_result["own_step_time_s"] / trunk_result["own_tokens"]
    fixed = trunk_result["own_wall_time_s"] - trunk_result["own_step_time_s"]
    return fixed + budget * per_token, budget * per_token


def _measured(records) -> dict:
    """Measured tokens, wall and step time of the reused runs, and the same priced for independent runs."""
    by_id = {r.id: r for r in records}
    out = dict.fromkeys(("tokens", "wall_s", "step_s", "independent_wall_s", "independent_step_s"), 0.0)
    for group in _groups([r.spec for r in records]).values():
        runs = [by_id[group["trunk"].id]] + [by_id[b.id] for b in group["branches"]]
        if any(r.state != "done" for r in runs):
            raise UserError(f"group {group['trunk'].shape} E={group['trunk'].experts} is not finished "
                            f"({', '.join(r.id for r in runs if r.state != 'done')}); run `moe-jax sweep run` first")
        out["tokens"] += sum(r.result["own_tokens"] for r in runs)
        out["wall_s"] += sum(r.result["own_wall_time_s"] for r in runs)
        out["step_s"] += sum(r.result["own_step_time_s"] for r in runs)
        for branch in group["branches"]:
            wall, step = _independent_cost(runs[0].result, branch.budget)
            out["independent_wall_s"] += wall
            out["independent_step_s"] += step
    out["tokens"] = int(out["tokens"])
    return out


def control_pairs(records) -> list[dict]:
    """Each done control with the done branch of the same (shape, E, T): losses, gap, wall times."""
    branches = {(r.spec.shape, r.spec.experts, r.spec.budget): r for r in records if r.spec.kind == "branch"}
    trunks = {(r.spec.shape, r.spec.experts): r.result for r in records if r.spec.kind == "trunk"}
    pairs = []
    for control in records:
        if control.spec.kind != "control" or control.state != "done":
            continue
        key = (control.spec.shape, control.spec.experts, control.spec.budget)
        branch = branches.get(key)
        if branch is None or branch.state != "done":
            continue
        pairs.append({"shape": control.spec.shape, "experts": control.spec.experts, "tokens": control.spec.budget,
                      "branch_loss": branch.result["loss"], "control_loss": control.result["loss"],
                      "gap": branch.result["loss"] - control.result["loss"],
                      "control_wall_s": control.result["own_wall_time_s"],
                      "priced_wall_s": _independent_cost(trunks[key[:2]], key[2])[0],
                      "branch": branch, "control": control})
    return pairs


def reuse_report(registry) -> dict:
    """All the report's numbers (JSON-ready apart from the records in `pairs`)."""
    records = registry.runs()
    analytic = token_ratio([r.spec for r in records])
    measured = _measured(records)
    return {
        "analytic_token_ratio": analytic["ratio"], "analytic_reuse_tokens": analytic["reuse_tokens"],
        "independent_tokens": analytic["independent_tokens"], "measured_tokens": measured["tokens"],
        "measured_token_ratio": measured["tokens"] / analytic["independent_tokens"],
        "wall_s": measured["wall_s"], "independent_wall_s": measured["independent_wall_s"],
        "measured_wall_ratio": measured["wall_s"] / measured["independent_wall_s"],
        "step_s": measured["step_s"], "independent_step_s": measured["independent_step_s"],
        "measured_step_ratio": measured["step_s"] / measured["independent_step_s"],
        "pairs": control_pairs(records),
    }


def format_report(report: dict) -> str:
    r = report
    analytic = r["analytic_token_ratio"]
    lines = [
        f"tokens: {r['measured_tokens']:,} trained with reuse vs {r['independent_tokens']:,} for independent runs",
        f"  token ratio  analytic ((1-f)·T_max + f·ΣT)/ΣT = {analytic:.4f}   measured = {r['measured_token_ratio']:.4f}",
        f"  wall time    {r['wall_s']:.1f} s with reuse vs {r['independent_wall_s']:.1f} s independent: ratio "
        f"{r['measured_wall_ratio']:.4f} ({r['measured_wall_ratio'] / analytic - 1:+.1%} vs the token ratio)",
        f"  step time    {r['step_s']:.1f} s with reuse vs {r['independent_step_s']:.1f} s independent: ratio "
        f"{r['measured_step_ratio']:.4f} ({r['measured_step_ratio'] / analytic - 1:+.1%} vs the token ratio)",
        "  (independent runs priced from each group's trunk: its fixed start-up/compile/eval seconds per run "
        "plus its seconds per token)",
    ]
    if not r["pairs"]:
        lines.append("no finished control runs: add `controls` to the grid to compare branches with independent runs")
    else:
        lines.append(f"branch vs control (independent trapezoidal run), held-out loss at the eval capacity factor:")
        lines.append(f"  {'shape':<8} {'E':>3} {'tokens':>12} {'branch':>8} {'control':>8} {'gap':>9} "
                     f"{'control wall s':>15} {'priced':>8}")
        for p in r["pairs"]:
            lines.append(f"  {p['shape']:<8} {p['experts']:>3} {p['tokens']:>12,} {p['branch_loss']:>8.4f} "
                         f"{p['control_loss']:>8.4f} {p['gap']:>+9.4f} {p['control_wall_s']:>15.1f} "
                         f"{p['priced_wall_s']:>8.1f}")
    return "\n".join(lines)


def _curve(workdir, up_to: float | None = None, start: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, train loss) of a run's logged steps, within (start, up_to]."""
    from moe_jax.train.metrics import read_metrics

    rows = [r for r in read_metrics(workdir, "train") if r["tokens"] > start and (up_to is None or r["tokens"] <= up_to)]
    return np.array([r["tokens"] for r in rows], float), np.array([r["loss"] for r in rows], float)


def plot_pairs(report: dict, path) -> Path:
    """Training loss of each branch (its trunk up to the branch point, then the branch) and its control,
    with the final held-out losses as markers; one panel per pair."""
    from matplotlib.figure import Figure

    from moe_jax.scaling.plots import save_figure

    pairs = report["pairs"]
    if not pairs:
        raise UserError("no branch/control pairs to plot: the grid has no finished controls")
    fig = Figure(figsize=(4.2 * len(pairs), 3.6))
    for i, p in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), i + 1)
        spec = p["branch"].spec
        trunk_dir = spec.overrides["train.init_from"].rpartition("@")[0]
        late = []  # losses after the first 20 % of tokens: the y-range worth seeing (not the first steps' ~ln V)
        for (x, y), style, label in (
            (_curve(trunk_dir, up_to=spec.start_tokens), "-", "trunk (constant LR)"),
            (_curve(spec.workdir, start=spec.start_tokens), "-", "branch (cooldown)"),
            (_curve(p["control"].spec.workdir), "--", "control (independent)"),
        ):
            ax.plot(x, y, style, lw=1.2, label=label)
            late += y[x >= 0.2 * p["tokens"]].tolist()
        if late:
            ends = [p["branch_loss"], p["control_loss"]]
            ax.set_ylim(min(late + ends) - 0.05, max(late + ends) + 0.05)
        ax.plot([p["tokens"]], [p["branch_loss"]], "o", color="tab:orange", mec="black", label="branch held-out")
        ax.plot([p["tokens"]], [p["control_loss"]], "s", color="tab:green", mec="black", mfc="none",
                label="control held-out")
        ax.set_title(f"{p['shape']} E={p['experts']} T={p['tokens']:,}: gap {p['gap']:+.4f}", fontsize=9)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
