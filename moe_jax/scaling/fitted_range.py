"""Where a law was fitted and how a prediction outside it is labelled.

The range is the paper's grid (SPEC §5: shapes d512..d2304, E 1..32) unless the law comes from a fit
JSON that records its own (`FittedRange.from_dict`, written by `moe-jax fit` from runs with d_model).
One rule for `law` and `plan`:
  * no model matches the request → UserError (non-integer or < 1 experts; a d_model below one head
    of the shape rule, i.e. under its smallest model d = head_dim / 1 layer: optimal.compute_optimal);
  * a model exists but lies outside the fitted range → the answer is given with a one-line warning
    that starts with "extrapolation:".
A Chinchilla law is not checked against the paper's joint grid (it has no E and its own data); a
Chinchilla law from a fit with a recorded range is checked against that range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moe_jax.errors import UserError
from moe_jax.scaling import constants, counting

_SHAPES = sorted(constants.PAPER_SHAPES.items(), key=lambda kv: kv[1][0])
SMALLEST_SHAPE, LARGEST_SHAPE = _SHAPES[0], _SHAPES[-1]  # (name, (d_model, layers, heads))
MAX_FITTED_EXPERTS = max(constants.PAPER_EXPERTS)


def shape_n_act(shape) -> float:
    """N_act of one (name, (d, layers, heads)) grid shape, by the paper's formula."""
    _, (d, layers, _) = shape
    return float(counting.paper_n_act(d, layers))


@dataclass(frozen=True)
class FittedRange:
    """The shapes, sizes, token counts and expert counts a law was fitted on.

    smallest/largest: the labels warnings name the ends by (the paper's "d512", a fit's "d_model 16").
    """

    d_model: tuple[float, float]
    n_act: tuple[float, float]
    tokens: tuple[float, float]
    experts: tuple[int, ...]
    smallest: str
    largest: str
    is_paper: bool = False

    def to_dict(self) -> dict:
        return {"d_model": list(self.d_model), "n_act": list(self.n_act),
                "tokens": list(self.tokens), "experts": list(self.experts)}

    @classmethod
    def of_fit(cls, d_model, n_act, tokens, experts) -> "FittedRange":
        """A fit's range from its [min, max] spans and expert counts; its ends are named by d_model."""
        return cls(d_model, n_act, tokens, tuple(sorted(set(experts))), f"d_model {d_model[0]:g}",
                   f"d_model {d_model[1]:g}")

    @classmethod
    def from_runs(cls, d_model, n_act, tokens, experts) -> "FittedRange":
        """The range of runs (arrays [R]) as `moe-jax fit` records it."""
        def span(a):
            return float(np.min(a)), float(np.max(a))

        return cls.of_fit(span(d_model), span(n_act), span(tokens), [int(k) for k in np.asarray(experts).tolist()])

    @classmethod
    def from_dict(cls, data, source: str = "fitted_range") -> "FittedRange":
        """Read a fit JSON's "fitted_range"; a missing or bad value is a one-line UserError naming source and key."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: fitted_range must be an object with d_model, n_act, tokens, experts, "
                            f"got {data!r}")
        spans = {k: _span_of(data.get(k), f"{source}: fitted_range.{k}") for k in ("d_model", "n_act", "tokens")}
        experts = data.get("experts")
        if (not isinstance(experts, list) or not experts
                or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in experts)):
            raise UserError(f"{source}: fitted_range.experts = {experts!r} must be a list of integers ≥ 1, "
                            f"e.g. [1, 2, 4, 8]")
        return cls.of_fit(spans["d_model"], spans["n_act"], spans["tokens"], experts)


def _span_of(value, where: str) -> tuple[float, float]:
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value)
    if not ok or value[0] > value[1]:
        raise UserError(f"{where} = {value!r} must be [min, max] of positive numbers, e.g. [16, 64]")
    return float(value[0]), float(value[1])


PAPER_RANGE = FittedRange(
    d_model=(float(SMALLEST_SHAPE[1][0]), float(LARGEST_SHAPE[1][0])),
    n_act=(shape_n_act(SMALLEST_SHAPE), shape_n_act(LARGEST_SHAPE)),
    tokens=(min(constants.PAPER_TOKEN_BUDGETS_B) * 1e9, max(constants.PAPER_TOKEN_BUDGETS_B) * 1e9),
    experts=tuple(constants.PAPER_EXPERTS),
    smallest=SMALLEST_SHAPE[0],
    largest=LARGEST_SHAPE[0],
    is_paper=True,
)


def integer_experts(flag: str, value) -> int:
    """An expert count that a model can have: an integer ≥ 1, else a one-line UserError naming the flag."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be an integer ≥ 1 (1 = dense), got {value!r}") from None
    if not np.isfinite(x) or x < 1 or x != int(x):
        lo, hi = (max(1, int(np.floor(x))), int(np.ceil(x))) if np.isfinite(x) and x > 1 else (1, 2)
        alt = f"e.g. {lo} or {hi}" if lo != hi else "e.g. 1, 8 or 32"
        raise UserError(f"{flag} must be an integer ≥ 1 (a model has whole experts; 1 = dense), got {value!r}; {alt}")
    return int(x)


def _list(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f}" if round(lo) == round(hi) else f"{lo:,.0f}–{hi:,.0f}"


def _checked(law, fitted: FittedRange) -> bool:
    """Whether a law is checked against a range: a joint law always, a Chinchilla law only against its own fit's."""
    return law.kind == "joint" or not fitted.is_paper


def expert_warnings(law, experts, fitted: FittedRange = PAPER_RANGE) -> list[str]:
    """One-line extrapolation warnings when a joint law is asked about E outside the fitted expert counts; else []."""
    lo, hi = min(fitted.experts), max(fitted.experts)
    if law.kind != "joint":
        return []
    out = []
    many = sorted({int(e) for e in experts if e > hi})
    if many:
        out.append(f"extrapolation: E={_list(many)} is beyond the expert counts the law was fitted on "
                   f"({lo}..{hi}); predictions there rest on the fitted saturation E_max alone")
    few = sorted({int(e) for e in experts if e < lo})
    if few:
        out.append(f"extrapolation: E={_list(few)} is below the expert counts the law was fitted on ({lo}..{hi})")
    return out


def shape_warnings(law, what: str, points, fitted: FittedRange = PAPER_RANGE) -> list[str]:
    """Extrapolation warnings for (experts, d_model) points outside the fitted d_model range (paper: d512..d2304).

    `what` names the points (e.g. "compute-optimal"); at most one line below and one above the range.
    """
    if not _checked(law, fitted):
        return []
    (d_lo, d_hi), (n_lo, n_hi) = fitted.d_model, fitted.n_act
    out = []
    for side, label, n_act, outside in (
        ("below the smallest", fitted.smallest, n_lo, [(e, d) for e, d in points if d < d_lo]),
        ("above the largest", fitted.largest, n_hi, [(e, d) for e, d in points if d > d_hi]),
    ):
        if outside:
            out.append(f"extrapolation: {what} d_model {_span([d for _, d in outside])} "
                       f"(E={_list(e for e, _ in outside)}) is {side} shape the law was fitted on, "
                       f"{label} (N_act {counting.format_count(n_act)})")
    return out
