"""The runs a law is fitted to: loading and validating a CSV, and synthetic runs drawn from a law.

A CSV has columns `n_act, tokens, loss` (+ `experts` for the joint law); a column `outlier` equal to 1
drops the row. Optional `d_model, n_layers` (+ `vocab`), as `moe-jax sweep collect` writes them, let the
fit record the range and shape rule it was fitted on (`shape_summary`); other columns are ignored.
Every problem is a one-line `UserError`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moe_jax.errors import UserError
from moe_jax.paths import open_existing, user_path
from moe_jax.scaling import constants
from moe_jax.scaling.counting import ModelShape
from moe_jax.scaling.fitted_range import FittedRange
from moe_jax.scaling.shape_rule import ShapeRule

LAW_KINDS = ("chinchilla", "joint")
SHAPE_COLUMNS = ("d_model", "n_layers")  # optional; with them the fit records its range and shape rule
N_PARAMS = {"chinchilla": 5, "joint": 11}


@dataclass(frozen=True)
class RunData:
    """Runs as float64 arrays of length n (experts is all ones for Chinchilla data); the shape columns
    d_model, n_layers and vocab (NaN where unknown) are None when the CSV has none."""

    n_act: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    experts: np.ndarray
    d_model: np.ndarray | None = None
    n_layers: np.ndarray | None = None
    vocab: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, idx) -> "RunData":
        def pick(a):
            return None if a is None else a[idx]

        return RunData(self.n_act[idx], self.tokens[idx], self.loss[idx], self.experts[idx],
                       pick(self.d_model), pick(self.n_layers), pick(self.vocab))

    def frame(self) -> pd.DataFrame:
        """A DataFrame with n_act, tokens, loss, experts columns (what the plots take)."""
        return pd.DataFrame(
            {"n_act": self.n_act, "tokens": self.tokens, "loss": self.loss, "experts": self.experts}
        )


def required_columns(kind: str) -> tuple[str, ...]:
    check_kind(kind)
    return ("n_act", "tokens", "loss") + (("experts",) if kind == "joint" else ())


def check_kind(kind: str) -> None:
    if kind not in LAW_KINDS:
        raise UserError(f"unknown law {kind!r}: use one of {', '.join(LAW_KINDS)}")


def read_csv(path, *, missing: str, unreadable: str) -> pd.DataFrame:
    """A local or gs:// CSV (`path` from paths.user_path); a missing file is UserError(missing), an unreadable
    one UserError("{unreadable}: {the error's first line}")."""
    try:
        with open_existing(path) as f:
            return pd.read_csv(f)
    except FileNotFoundError:
        raise UserError(missing) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{unreadable}: {msg}") from None


def load_runs(path, kind: str) -> RunData:
    """Read and validate a runs CSV for a law of `kind` ('chinchilla' or 'joint')."""
    check_kind(kind)
    path = user_path(path)
    df = read_csv(path, missing=f"runs file {path} does not exist", unreadable=f"cannot read runs CSV {path}")
    return runs_from_frame(df, kind, source=str(path))


def runs_from_frame(df: pd.DataFrame, kind: str, source: str = "runs") -> RunData:
    """Validate a DataFrame of runs (see module doc) and return it as RunData."""
    cols = required_columns(kind)
    present = [str(c).strip() for c in df.columns]
    df = df.set_axis(present, axis=1)
    for col in cols:
        if col not in present:
            close = difflib.get_close_matches(col, present, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"{source}: missing column {col!r}{hint}; a {kind} fit needs columns {', '.join(cols)}"
                f", found {', '.join(present) or 'none'}"
            )
    if "outlier" in present:
        flag = pd.to_numeric(df["outlier"], errors="coerce").fillna(0)
        df = df[flag != 1]
    shape_cols = SHAPE_COLUMNS if all(c in present for c in SHAPE_COLUMNS) else ()
    values = {}
    for col in cols + shape_cols + (("vocab",) if shape_cols and "vocab" in present else ()):
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(num) | (num <= 0)
        if col == "vocab":
            bad &= raw.notna().to_numpy()  # an empty cell: a run whose vocabulary was not recorded
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = int(df.index[i]) + 2  # 1-based, after the header line
            raise UserError(
                f"{source}: row {row} column {col!r} has value {raw.iloc[i]!r}; "
                f"values must be finite positive numbers"
            )
        values[col] = num
    n = len(df)
    need = N_PARAMS[kind]
    if n <= need:
        raise UserError(f"{source}: {n} usable run(s) but a {kind} fit has {need} parameters; give more than {need} runs")
    experts = values.get("experts", np.ones(n))
    if kind == "joint" and len(np.unique(experts)) < 2:
        raise UserError(
            f"{source}: a joint fit needs runs with at least two expert counts, all have experts={experts[0]:g}; "
            f"use --law chinchilla for a single E"
        )
    return RunData(values["n_act"], values["tokens"], values["loss"], experts,
                   values.get("d_model"), values.get("n_layers"), values.get("vocab"))


def shape_summary(runs: RunData) -> tuple[dict | None, dict | None, list[str]]:
    """(fitted_range, shape_rule, warnings) of runs with d_model / n_layers columns, else (None, None, []).

    The shape rule is recorded only when every run has n_layers = d_model / h for one integer h and one
    known vocabulary (a `vocab` column); nothing is guessed.
    """
    if runs.d_model is None:
        return None, None, []
    fitted = FittedRange.from_runs(runs.d_model, runs.n_act, runs.tokens, runs.experts).to_dict()
    ratio = runs.d_model / runs.n_layers
    heads = sorted({float(h) for h in ratio})
    if len(heads) != 1 or not heads[0].is_integer():
        shown = ", ".join(f"{h:g}" for h in heads[:4])
        return fitted, None, [f"the runs do not share one shape rule (d_model / n_layers = {shown}): the fit records "
                              f"no shape_rule and `plan --coeffs` sizes models by the paper's"]
    if runs.vocab is None:
        return fitted, None, []
    vocabs = {float(v) for v in runs.vocab}
    if len(vocabs) != 1 or not all(np.isfinite(v) and v.is_integer() for v in vocabs):
        return fitted, None, [f"the runs' vocab column is missing values or has several sizes "
                              f"({', '.join(f'{v:g}' for v in sorted(vocabs)[:4])}): the fit records no shape_rule"]
    return fitted, ShapeRule(int(heads[0]), int(vocabs.pop())).to_dict(), []


def paper_grid_points(experts=constants.PAPER_EXPERTS, max_ratio: float = 100.0):
    """(n_act, tokens, experts) of the paper's grid (SPEC §5): 17 shapes × E × token budgets with
    tokens / non-embedding active params ≤ max_ratio. N_act is the exact count of `ModelShape`."""
    rows = []
    for d, n_layers, n_heads in constants.PAPER_SHAPES.values():
        non_embedding = 13.0 * d * d * n_layers
        n_act = ModelShape.paper(d, n_layers=n_layers, n_heads=n_heads).counts()["n_act"]
        for budget in constants.PAPER_TOKEN_BUDGETS_B:
            tokens = budget * 1e9
            if tokens / non_embedding <= max_ratio:
                rows.extend((n_act, tokens, e) for e in experts)
    return np.asarray(rows, np.float64).T  # [3, n]


def synthetic_runs(law, noise: float = 0.01, n_points: int | None = None, seed: int = 0) -> RunData:
    """Runs at the paper's grid points with loss = law · exp(noise · N(0, 1)).

    n_points subsamples the grid (without replacement, seeded) to mimic the paper's ~270 finished runs.
    """
    n_act, tokens, experts = paper_grid_points()
    rng = np.random.default_rng(seed)
    if n_points is not None:
        if not 0 < n_points <= len(n_act):
            raise UserError(f"n_points must be in 1..{len(n_act)}, got {n_points}")
        idx = np.sort(rng.choice(len(n_act), size=n_points, replace=False))
        n_act, tokens, experts = n_act[idx], tokens[idx], experts[idx]
    loss = np.asarray(law.loss(n_act, tokens, experts), np.float64)
    loss = loss * np.exp(noise * rng.standard_normal(len(loss)))
    return RunData(n_act, tokens, loss, experts)


def lowest_loss_mask(loss: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k lowest-loss runs (the held-out extrapolation set); ties broken by order."""
    if k < 0 or (k and k >= len(loss)):
        raise UserError(f"held-out size must be in 0..{len(loss) - 1} for {len(loss)} runs, got {k}")
    mask = np.zeros(len(loss), bool)
    if k:
        mask[np.argsort(loss, kind="stable")[:k]] = True
    return mask


def paper_weights(loss: np.ndarray) -> np.ndarray:
    """The paper's per-run weights w ∝ (log L)^−30, normalised to Σw = n (SPEC §2)."""
    if not np.all(np.log(loss) > 0):
        raise UserError("paper weights need every loss > 1 nat (log L > 0); use --weights none")
    log_w = constants.JOINT_WEIGHT_POWER * np.log(np.log(loss))
    w = np.exp(log_w - log_w.max())
    return w * (len(w) / w.sum())
