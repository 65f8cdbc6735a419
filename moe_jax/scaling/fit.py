"""Fit a Chinchilla or joint MoE law to runs (SPEC §2): multi-start search, held-out selection,
RMSE of log L, bootstrap percentile intervals, and the JSON result that `--coeffs` accepts.

    result = fit(load_runs("runs.csv", "joint"), "joint")      # paper defaults for the law kind
    write_result(result, "fit.json")                             # `moe-jax plan --coeffs fit.json`
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from moe_jax.errors import UserError
from moe_jax.paths import user_path
from moe_jax.scaling import constants
from moe_jax.scaling.fit_data import N_PARAMS, RunData, check_kind, lowest_loss_mask, paper_weights, shape_summary
from moe_jax.scaling.fit_grids import start_grid
from moe_jax.scaling.fit_model import Objective, theta_to_law
from moe_jax.scaling.fit_search import Polished, distinct, exhaustive_search, polish, screen
from moe_jax.scaling.law import CHINCHILLA_KEYS, JOINT_KEYS
from moe_jax.scaling.optimal import compute_optimal_closed_form

WEIGHT_MODES = ("paper", "none")
DERIVED_FLOPS = (1e20, 1e22)  # the paper's scale: budgets of N* for runs without shape columns (derived_budgets)
RUNS_PER_PARAMETER = 6  # fewer training runs per fitted parameter than this: a warning (sample_size_warnings)

DEFAULTS = {
    "chinchilla": {"grid": "epoch", "heldout_lowest": 0, "huber_delta": constants.CHINCHILLA_HUBER_DELTA,
                   "weights": "none", "l2": 0.0},
    "joint": {"grid": "paper", "heldout_lowest": 10, "huber_delta": constants.JOINT_HUBER_DELTA,
              "weights": "paper", "l2": constants.JOINT_L2_PENALTY},
}


@dataclass
class FitSettings:
    """Everything that defines a fit; None fields take the law kind's paper default (DEFAULTS)."""

    kind: str
    grid: str | None = None
    heldout_lowest: int | None = None
    huber_delta: float | None = None
    weights: str | None = None
    l2: float | None = None
    bootstrap: int = 0
    seed: int = 0
    top_k: int = 20  # distinct screened candidates polished with scipy (per ranking)
    finish: int = 1  # best polished candidates re-polished with objective-relative tolerances
    exhaustive: bool = False  # scipy from every start instead of screening (the slow reference)

    def resolved(self) -> "FitSettings":
        check_kind(self.kind)
        out = FitSettings(**self.__dict__)
        for k, v in DEFAULTS[self.kind].items():
            if getattr(out, k) is None:
                setattr(out, k, v)
        if out.weights not in WEIGHT_MODES:
            raise UserError(f"unknown weights {out.weights!r}: use one of {', '.join(WEIGHT_MODES)}")
        if not (math.isfinite(out.huber_delta) and out.huber_delta > 0):
            raise UserError(f"Huber delta must be a positive number, got {out.huber_delta}; e.g. --huber-delta 1e-3")
        if not (math.isfinite(out.l2) and out.l2 >= 0):
            raise UserError(f"L2 penalty must be >= 0, got {out.l2}; e.g. --l2 0 or --l2 1e-5")
        if out.bootstrap < 0:
            raise UserError(f"bootstrap count must be >= 0, got {out.bootstrap}; e.g. --bootstrap 0 (none) or 200")
        if not 0 <= out.seed < 2**63:
            raise UserError(f"bootstrap seed must be an integer in 0..2^63-1, got {out.seed}; e.g. --seed 0")
        if out.top_k < 1 or out.finish < 1:
            raise UserError(f"top_k and finish must be >= 1, got {out.top_k} and {out.finish}")
        return out


@dataclass
class FitResult:
    """A fitted law with its diagnostics. `to_dict()` is the JSON `moe-jax fit` writes."""

    kind: str
    theta: np.ndarray
    objective: float
    rmse_train: float
    rmse_heldout: float | None
    heldout_mask: np.ndarray
    settings: FitSettings
    n_starts: int
    seconds: float
    derived: dict = field(default_factory=dict)
    intervals: dict | None = None
    warnings: list[str] = field(default_factory=list)
    fitted_range: dict | None = None  # d_model, n_act, tokens [min, max] and experts of the runs (shape_summary)
    shape_rule: dict | None = None  # {"head_dim", "vocab"} the runs share, for `plan --coeffs`

    @property
    def law(self):
        return theta_to_law(self.theta, self.kind)

    @property
    def coefficients(self) -> dict[str, float]:
        return self.law.to_dict()

    @property
    def selection_score(self) -> float:
        """0.5·RMSE_train + 0.5·RMSE_heldout with a held-out set, else the objective."""
        return _score(self.objective, self.rmse_train, self.rmse_heldout)

    def to_dict(self) -> dict:
        out = {
            "law": self.kind,
            "coefficients": self.coefficients,
            "objective": self.objective,
            "rmse_train": self.rmse_train,
            "rmse_heldout": self.rmse_heldout,
            "n_train": int((~self.heldout_mask).sum()),
            "n_heldout": int(self.heldout_mask.sum()),
            "derived": self.derived,
            "settings": {k: v for k, v in self.settings.__dict__.items()},
            "n_starts": self.n_starts,
            "seconds": round(self.seconds, 3),
        }
        if self.intervals is not None:
            out["intervals"] = self.intervals
        if self.fitted_range is not None:
            out["fitted_range"] = self.fitted_range
        if self.shape_rule is not None:
            out["shape_rule"] = self.shape_rule
        out["warnings"] = list(self.warnings)
        return out


def write_result(result: FitResult, path) -> Path:
    """Write the result as JSON (the --coeffs file) to a local or gs:// path."""
    path = user_path(path)
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def _score(objective, rmse_train, rmse_heldout):
    return objective if rmse_heldout is None else 0.5 * rmse_train + 0.5 * rmse_heldout


def _rmse(r) -> np.ndarray:
    """RMSE over the last axis of residuals [..., n]."""
    return np.sqrt(np.mean(np.square(r), axis=-1))


def n_opt(law, flops: float, experts: float = 1.0) -> float:
    """Compute-optimal N* at a budget (SPEC §4 closed form, from `optimal`)."""
    return float(compute_optimal_closed_form(law, flops, experts)[0])


def derived_budgets(runs: RunData) -> tuple[float, ...]:
    """Budgets at which N* is reported: DERIVED_FLOPS for runs without shape columns (e.g. the Epoch points,
    near the paper's scale); for runs with d_model (a sweep of the user's own, whose range the fit records)
    the geometric middle and the top of the runs' 6·N·D, each to one significant digit."""
    if runs.d_model is None:
        return DERIVED_FLOPS
    budgets = 6.0 * runs.n_act * runs.tokens
    lo, hi = np.log10(np.min(budgets)), np.log10(np.max(budgets))
    return tuple(sorted({float(f"{10 ** x:.0e}") for x in (0.5 * (lo + hi), hi)}))


def derived_quantities(law, experts, budgets=DERIVED_FLOPS) -> dict[str, float]:
    """N* at each budget for each expert count (names like n_opt_F1e+20_E8)."""
    out = {}
    for e in experts:
        for f in budgets:
            key = f"n_opt_F{f:.0e}" + (f"_E{e:g}" if law.kind == "joint" else "")
            with np.errstate(all="ignore"):
                out[key] = n_opt(law, f, e)
    return out


def sample_size_warnings(n_train: int, kind: str) -> list[str]:
    """A warning when the training runs are too few per parameter for stable coefficients.

    Measured on the Epoch 2024 points (Chinchilla law, 6 random subsets each): α spans 0.05–0.39 with
    6 runs, 0.28–0.43 with 20 and 0.30–0.36 with 30 (all 240: 0.347), hence the line at 6 per parameter.
    """
    need = RUNS_PER_PARAMETER * N_PARAMS[kind]
    if n_train >= need:
        return []
    return [f"only {n_train} training runs for the {N_PARAMS[kind]} parameters of a {kind} law: the coefficients "
            f"are poorly determined (stable from about {need} runs); add runs or check them with --bootstrap 100"]


def build_objective(runs: RunData, s: FitSettings) -> Objective:
    w = paper_weights(runs.loss) if s.weights == "paper" else None
    return Objective(s.kind, runs.n_act, runs.tokens, runs.loss, runs.experts, s.huber_delta, w, s.l2)


def fit(runs: RunData, settings: FitSettings | str, progress: Callable[[str], None] | None = None,
        starts: np.ndarray | None = None) -> FitResult:
    """Fit the law `settings.kind` to runs; see the module doc. Bad settings or data → UserError.

    `starts` [S, P] replaces the named grid (e.g. a random subset for benchmarking the exhaustive loop).
    """
    t0 = time.perf_counter()
    if isinstance(settings, str):
        settings = FitSettings(kind=settings)
    s = settings.resolved()
    say = progress or (lambda msg: None)
    heldout = lowest_loss_mask(runs.loss, s.heldout_lowest)
    train, test = runs.subset(~heldout), runs.subset(heldout)
    if len(train) <= N_PARAMS[s.kind]:
        raise UserError(
            f"{len(train)} training runs after holding out {s.heldout_lowest} but a {s.kind} fit has "
            f"{N_PARAMS[s.kind]} parameters; give more runs or a smaller held-out set"
        )
    obj = build_objective(train, s)
    test_obj = Objective(s.kind, test.n_act, test.tokens, test.loss, test.experts, 1.0) if len(test) else None
    starts = start_grid(s.grid, s.kind) if starts is None else np.atleast_2d(np.asarray(starts, np.float64))
    if starts.shape[1] != N_PARAMS[s.kind]:
        raise UserError(f"starts have {starts.shape[1]} parameters, a {s.kind} law has {N_PARAMS[s.kind]}")

    def rmses(theta):
        theta = np.atleast_2d(theta)
        with np.errstate(all="ignore"):
            tr = _rmse(obj.residuals(theta))
            te = _rmse(test_obj.residuals(theta)) if test_obj is not None else None
        return tr, te

    cand = _candidates(obj, starts, s, rmses if test_obj is not None else None, say)
    # Finish the best few with objective-relative tolerances; a finished point replaces its start only
    # if the selection score improves (with held-out runs the score is not the objective).
    cand = _select(cand, rmses, s.finish)
    say(f"finishing the best {s.finish} with objective-relative tolerances (at most 2,000 steps)")
    finished = polish(obj.scalar, cand.x, relative=True)
    cand = _select(Polished(np.vstack([finished.x, cand.x]), np.concatenate([finished.f, cand.f])), rmses, 1)
    if not np.isfinite(cand.f[0]):
        raise UserError("the fit failed: no start reached a finite objective (check the runs' values)")
    tr, te = rmses(cand.x)
    theta = cand.x[0]
    law = theta_to_law(theta, s.kind)
    experts, budgets = np.unique(runs.experts), derived_budgets(runs)
    fitted_range, shape_rule, shape_notes = shape_summary(runs)
    result = FitResult(
        kind=s.kind,
        theta=theta,
        objective=float(cand.f[0]),
        rmse_train=float(tr[0]),
        rmse_heldout=None if te is None else float(te[0]),
        heldout_mask=heldout,
        settings=s,
        n_starts=len(starts),
        seconds=0.0,
        derived=derived_quantities(law, experts, budgets),
        warnings=sample_size_warnings(len(train), s.kind) + shape_notes,
        fitted_range=fitted_range,
        shape_rule=shape_rule,
    )
    if s.bootstrap:
        result.intervals = bootstrap(train, s, cand.x[:1], experts, budgets, say)
    result.seconds = time.perf_counter() - t0
    return result


def _candidates(obj, starts, s: FitSettings, rmses, say) -> Polished:
    """Polished local minima: from every start (exhaustive) or from the screened best distinct ones
    (by objective, and by held-out selection score when rmses is given)."""
    if s.exhaustive:
        say(f"exhaustive: scipy L-BFGS-B from each of {len(starts)} starts")
        return exhaustive_search(obj.scalar, starts, progress=say)

    def score(theta):
        tr, te = rmses(theta)
        return 0.5 * tr + 0.5 * te

    x, f = screen(obj.value_and_grad, starts, progress=say, score=score if rmses is not None else None)
    picks = distinct(x, s.top_k)
    if rmses is not None:
        by_score = np.argsort(np.where(np.isfinite(f), score(x), np.inf), kind="stable")
        picks = sorted(set(picks) | {int(by_score[i]) for i in distinct(x[by_score], s.top_k)})
    say(f"polishing {len(picks)} distinct candidates with scipy L-BFGS-B")
    return polish(obj.scalar, x[picks])


def _select(cand, rmses, k: int):
    """The k best candidates by selection score (0.5·RMSE_train + 0.5·RMSE_heldout, else objective)."""
    tr, te = rmses(cand.x)
    score = cand.f if te is None else 0.5 * tr + 0.5 * te
    order = np.argsort(np.where(np.isfinite(cand.f), score, np.inf), kind="stable")[:k]
    return Polished(cand.x[order], cand.f[order])


def bootstrap(train: RunData, s: FitSettings, starts, experts, budgets, say) -> dict:
    """Percentile intervals (2.5 %, 97.5 %): resample training runs, refit from the best start(s)."""
    rng = np.random.default_rng(s.seed)
    keys = JOINT_KEYS if s.kind == "joint" else CHINCHILLA_KEYS
    samples: dict[str, list[float]] = {}
    for b in range(s.bootstrap):
        if b % max(1, s.bootstrap // 20) == 0 or b + 1 == s.bootstrap:
            say(f"bootstrap {b + 1}/{s.bootstrap}")
        idx = rng.integers(0, len(train), len(train))
        obj = build_objective(train.subset(idx), s)
        p = polish(obj.scalar, starts, relative=True)
        law = theta_to_law(p.x[int(np.argmin(p.f))], s.kind)
        values = dict(law.to_dict())
        values.update(derived_quantities(law, experts, budgets))
        for k, v in values.items():
            samples.setdefault(k, []).append(v)

    def band(v):
        lo, hi = np.percentile(np.asarray(v), [2.5, 97.5])
        return [float(lo), float(hi)]

    return {
        "level": [2.5, 97.5],
        "n_boot": s.bootstrap,
        "coefficients": {k: band(samples[k]) for k in keys},
        "derived": {k: band(v) for k, v in samples.items() if k not in keys},
        # every resample's coefficients [n_boot, P] (keys in `sample_keys`): claims can be checked per sample
        "sample_keys": list(keys),
        "samples": [[float(samples[k][b]) for k in keys] for b in range(s.bootstrap)],
    }
