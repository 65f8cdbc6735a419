"""A law with the shape rule and fitted range it belongs to: what `plan` and `law` need from `--coeffs`.

A named set (paper2025, …) and a fit JSON without the keys get the paper's rule and grid; a fit JSON
from runs with d_model / n_layers (/ vocab) columns carries "shape_rule" and "fitted_range"
(`moe-jax fit`), and predictions are sized and checked against those instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_jax.scaling.fitted_range import PAPER_RANGE, FittedRange
from moe_jax.scaling.law import ChinchillaLaw, JointLaw, load_law_document
from moe_jax.scaling.shape_rule import PAPER_RULE, ShapeRule


@dataclass(frozen=True)
class LawContext:
    law: ChinchillaLaw | JointLaw
    shape: ShapeRule = PAPER_RULE
    fitted: FittedRange = PAPER_RANGE
    fitted_from_file: bool = False  # the range is the fit's own, not the paper's grid


def load_law_context(spec: str) -> LawContext:
    """The law of `spec` (load_law) with its fit JSON's shape_rule and fitted_range, else the paper's."""
    law, document = load_law_document(spec)
    if not isinstance(document, dict):
        return LawContext(law)
    shape = ShapeRule.from_dict(document["shape_rule"], spec) if "shape_rule" in document else PAPER_RULE
    has_range = "fitted_range" in document
    fitted = FittedRange.from_dict(document["fitted_range"], spec) if has_range else PAPER_RANGE
    return LawContext(law, shape, fitted, has_range)
