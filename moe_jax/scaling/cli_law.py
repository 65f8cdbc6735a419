"""`moe-jax law`: the predicted loss of one (N_act, tokens, experts) point."""

from __future__ import annotations

import argparse
import json

from moe_jax.cli import reject_extra
from moe_jax.errors import UserError, warn
from moe_jax.scaling import counting, fitted_range
from moe_jax.scaling.law_context import LawContext, load_law_context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-act", metavar="N", help="active parameters incl. embedding and head (e.g. 1e8)")
    parser.add_argument("--tokens", metavar="D", help="training tokens (e.g. 1e10)")
    parser.add_argument("--experts", metavar="E", default="1", help="number of experts (1 = dense; default 1)")
    parser.add_argument("--coeffs", default="paper2025", help="paper2025 | hoffmann2022 | epoch2024 | PATH to a fit JSON")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def law_warnings(ctx: LawContext, n_act: float, experts: int) -> list[str]:
    """Extrapolation warnings (fitted_range) for one point; its d_model is the law's shape rule with this N_act."""
    d_model = float(ctx.shape.d_for_params(n_act))
    return (fitted_range.expert_warnings(ctx.law, [experts], ctx.fitted)
            + fitted_range.shape_warnings(ctx.law, f"N_act {n_act:.3g} =", [(experts, d_model)], ctx.fitted))


def run(args: argparse.Namespace, extra: list[str]) -> int:
    reject_extra(extra)
    n_act = counting.parse_number("--n-act", args.n_act, example="1e8")
    tokens = counting.parse_number("--tokens", args.tokens, example="1e10")
    experts = fitted_range.integer_experts("--experts", args.experts)
    ctx = load_law_context(args.coeffs)
    law = ctx.law
    if law.kind == "chinchilla" and experts != 1:
        raise UserError(
            f"--coeffs {args.coeffs} is a Chinchilla law with no expert dependence; use --experts 1 or a joint law"
        )
    loss = float(law.loss(n_act, tokens, experts))
    warnings = law_warnings(ctx, n_act, experts)
    for line in warnings:
        warn("law", line)
    if args.json:
        print(json.dumps({
            "loss": loss,
            "n_act": n_act,
            "tokens": tokens,
            "experts": experts,
            "flops": float(counting.training_flops(n_act, tokens)),
            "coeffs": args.coeffs,
            "law": law.kind,
            "warnings": warnings,
        }))
    else:
        print(
            f"predicted loss {loss:.4f} nats/token  (N_act={n_act:.4g}, tokens={tokens:.4g}, E={experts:g}, "
            f"{counting.training_flops(n_act, tokens):.3g} FLOPs, {law.kind} law {args.coeffs})"
        )
    return 0
