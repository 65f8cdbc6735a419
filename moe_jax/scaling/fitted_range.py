"""Where the paper's law was fitted (SPEC §5 grid) and how a prediction outside it is labelled.

One rule for `law` and `plan`:
  * no model matches the request → UserError (non-integer or < 1 experts; a d_model below one
    64-dim head, i.e. under the smallest paper-shape model d64 / 1 layer: optimal.compute_optimal);
  * a model exists but lies outside the grid the joint law was fitted on (shapes d512..d2304,
    E 1..32) → the answer is given with a one-line warning that starts with "extrapolation:".
A Chinchilla law is not checked against the joint law's grid (it has no E and its own data).
"""

from __future__ import annotations

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


def expert_warnings(law, experts) -> list[str]:
    """A one-line extrapolation warning when a joint law is asked about E above the fitted 1..32; else []."""
    many = sorted({int(e) for e in experts if e > MAX_FITTED_EXPERTS})
    if law.kind != "joint" or not many:
        return []
    return [f"extrapolation: E={_list(many)} is beyond the expert counts the law was fitted on "
            f"(1..{MAX_FITTED_EXPERTS}); predictions there rest on the fitted saturation E_max alone"]


def shape_warnings(law, what: str, points) -> list[str]:
    """Extrapolation warnings for (experts, d_model) points of a joint law outside the fitted shapes d512..d2304.

    `what` names the points (e.g. "compute-optimal"); at most one line below and one above the range.
    """
    if law.kind != "joint":
        return []
    out = []
    for side, shape, outside in (
        ("below the smallest", SMALLEST_SHAPE, [(e, d) for e, d in points if d < SMALLEST_SHAPE[1][0]]),
        ("above the largest", LARGEST_SHAPE, [(e, d) for e, d in points if d > LARGEST_SHAPE[1][0]]),
    ):
        if outside:
            out.append(f"extrapolation: {what} d_model {_span([d for _, d in outside])} "
                       f"(E={_list(e for e, _ in outside)}) is {side} shape the law was fitted on, "
                       f"{shape[0]} (N_act {counting.format_count(shape_n_act(shape))})")
    return out
