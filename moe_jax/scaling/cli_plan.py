"""`moe-jax plan`: compute-, memory- and inference-optimal configurations for a FLOPs budget."""

from __future__ import annotations

import argparse
import json

from moe_jax.cli import reject_extra
from moe_jax.errors import UserError, warn
from moe_jax.scaling import constants, counting, fitted_range, optimal
from moe_jax.scaling.counting import format_count
from moe_jax.scaling.shape_rule import ShapeRule
from moe_jax.scaling.law_context import LawContext, load_law_context
from moe_jax.scaling.plan_config import write_plan_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flops", metavar="F", help="training FLOPs budget (6·N_act·D), e.g. 1e22")
    parser.add_argument("--experts", metavar="LIST", help="comma-separated expert counts (default 1,2,4,8,16,32, or those a fit JSON was fitted on)")
    parser.add_argument("--memory", metavar="SIZE", help="accelerator memory for the weights (+KV), e.g. 80GB")
    parser.add_argument("--bytes-per-param", metavar="B", default="2", help="bytes per stored parameter (default 2)")
    parser.add_argument("--kv-tokens", metavar="K", default="0", help="KV-cache tokens held in memory (adds K·2·L·d)")
    parser.add_argument("--inference-tokens", metavar="T", default="0",
                        help="tokens served over the model's life; their 2·N_act FLOPs each come out of the budget")
    parser.add_argument("--coeffs", default="paper2025", help="paper2025 | hoffmann2022 | epoch2024 | PATH to a fit JSON")
    parser.add_argument("--realistic", action="store_true",
                        help="memory plan over d_model multiples of the head dim (integer layers; the paper: 64)")
    parser.add_argument("--plot", metavar="DIR",
                        help="write loss_vs_flops.png, compute_optimal.png and memory_optimal_map.png into DIR")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    parser.add_argument("--write-config", metavar="PATH",
                        help="write the recommended configuration as a runnable train config .py (integer shape)")


def parse_experts(text: str | None, law, default=constants.PAPER_EXPERTS) -> tuple[int, ...]:
    """'1,2,4' → (1, 2, 4); default: `default` (the paper's list, or a fit's own) for a joint law, (1,) for Chinchilla."""
    if text is None:
        return tuple(default) if law.kind == "joint" else (1,)
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise UserError(f"--experts must be a comma-separated list of integers ≥ 1 (e.g. 1,2,4,8), got {text!r}")
    return optimal.check_experts(law, [int(p) for p in parts])


def plan_warnings(plan: dict, ctx: LawContext) -> list[str]:
    """Extrapolation warnings (fitted_range) for every E and d_model the plan shows, against the law's range."""
    law, fitted = ctx.law, ctx.fitted
    rows = plan["compute_optimal"]
    out = fitted_range.expert_warnings(law, [r["experts"] for r in rows], fitted)
    out += fitted_range.shape_warnings(law, "compute-optimal", [(r["experts"], r["d_model"]) for r in rows], fitted)
    if "memory_optimal" in plan:
        cands = plan["memory_optimal"]["per_expert"]
        out += fitted_range.shape_warnings(law, "memory-optimal", [(c["experts"], c["d_model"]) for c in cands],
                                           fitted)
    return out


def build_plan(args: argparse.Namespace) -> dict:
    """All the numbers of the plan as a JSON-ready dict (the CLI's JSON contract)."""
    flops = counting.parse_number("--flops", args.flops, example="1e22")
    ctx = load_law_context(args.coeffs)
    law, shape = ctx.law, ctx.shape
    experts = parse_experts(args.experts, law, ctx.fitted.experts if ctx.fitted_from_file else constants.PAPER_EXPERTS)
    bytes_per_param = counting.parse_number("--bytes-per-param", args.bytes_per_param, example="2")
    kv_tokens = counting.parse_number("--kv-tokens", args.kv_tokens, allow_zero=True, example="8192")
    inference_tokens = counting.parse_number("--inference-tokens", args.inference_tokens, allow_zero=True,
                                              example="1e12")
    if args.memory is None and (kv_tokens > 0 or args.realistic):
        raise UserError("--kv-tokens and --realistic apply to the memory-constrained plan: add --memory (e.g. 80GB)")
    plan: dict = {
        "flops": flops,
        "coeffs": args.coeffs,
        "law": law.kind,
        "inference_tokens": inference_tokens,
        "shape_rule": shape.to_dict(),
        "compute_optimal": [r.to_dict() for r in optimal.compute_optimal(law, flops, experts, inference_tokens, shape)],
    }
    if args.memory is not None:
        memory_bytes = counting.parse_memory(args.memory)
        memory_params = counting.memory_in_params(memory_bytes, bytes_per_param)
        smallest = optimal.smallest_model_params(min(experts), kv_tokens, shape)
        if memory_params < smallest:
            raise UserError(
                f"--memory {args.memory} ({memory_params:.4g} params at {bytes_per_param:g} B/param) is too small for "
                f"any model: the smallest (d_model {shape.head_dim}, 1 layer, E={min(experts)}"
                f"{', with its KV cache' if kv_tokens else ''}) needs {smallest:.4g} params = "
                f"{smallest * bytes_per_param / 1e6:.4g} MB"
            )
        mem = optimal.memory_optimal(
            law, flops, memory_params, experts, kv_tokens=kv_tokens, inference_tokens=inference_tokens,
            realistic=args.realistic, shape=shape)
        plan["memory_optimal"] = {
            **mem.to_dict(),
            "memory_bytes": memory_bytes,
            "memory_params": memory_params,
            "bytes_per_param": bytes_per_param,
            "kv_tokens": kv_tokens,
            "realistic": bool(args.realistic),
        }
    plan["warnings"] = plan_warnings(plan, ctx)
    return plan


def recommendation(plan: dict) -> dict:
    """The configuration to train: the memory optimum if a memory was given, else the best compute optimum."""
    if "memory_optimal" in plan:
        m = plan["memory_optimal"]
        return {k: m[k] for k in ("experts", "d_model", "n_layers", "n_heads", "tokens", "loss", "lr")}
    best = min(plan["compute_optimal"], key=lambda r: r["loss"])
    return {
        "experts": best["experts"],
        "d_model": best["d_model"],
        "n_layers": best["n_layers"],
        "n_heads": best["n_layers"],
        "tokens": best["tokens"],
        "loss": best["loss"],
        "lr": best["lr"],
    }


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def format_plan(plan: dict) -> str:
    """The human-readable tables and the one-line recommendation."""
    lines = [f"budget {plan['flops']:.3g} training FLOPs, {plan['law']} law '{plan['coeffs']}'"
             + (f", {plan['inference_tokens']:.3g} inference tokens" if plan["inference_tokens"] else "")]
    shape = ShapeRule.from_dict(plan["shape_rule"])
    rule = "the paper's shape rule" if shape.is_paper else f"the law's shape rule ({shape.describe()})"
    h = shape.head_dim
    lines += ["", f"compute-optimal per expert count (no memory limit; d_model from {rule}):",
              f"{'E':>4} {'N_act':>8} {'tokens':>8} {'tok/N':>7} {'d_model':>8} {'layers':>7} {'loss':>8} {'peak LR':>9}"]
    for r in plan["compute_optimal"]:
        lines.append(f"{r['experts']:>4} {format_count(r['n_act']):>8} {format_count(r['tokens']):>8} "
                     f"{r['tokens'] / r['n_act']:>7.1f} {r['d_model']:>8.0f} {r['n_layers']:>7.1f} "
                     f"{r['loss']:>8.4f} {r['lr']:>9.2e}")
    if "memory_optimal" in plan:
        m = plan["memory_optimal"]
        kv = f", KV cache of {m['kv_tokens']:.3g} tokens" if m["kv_tokens"] else ""
        mode = f"d_model multiple of {h}, integer layers" if m["realistic"] else f"integer d_model, layers = d/{h}"
        lines += ["", f"memory-optimal under {m['memory_bytes'] / 1e9:.4g} GB at {m['bytes_per_param']:g} B/param "
                  f"= {format_count(m['memory_params'])} params{kv} ({mode}):",
                  f"{'E':>4} {'d_model':>8} {'layers':>7} {'N_act':>8} {'N_total':>8} {'tokens':>8} {'loss':>8} {'Δloss':>8}"]
        for c in m["per_expert"]:
            mark = " *" if c["experts"] == m["experts"] else ""
            lines.append(f"{c['experts']:>4} {c['d_model']:>8} {_num(c['n_layers']):>7} {format_count(c['n_act']):>8} "
                         f"{format_count(c['n_total']):>8} {format_count(c['tokens']):>8} {c['loss']:>8.4f} "
                         f"{c['loss'] - m['loss']:>+8.4f}{mark}")
        if m["runner_up"] is not None:
            lines.append(f"runner-up: E={m['runner_up']['experts']} (loss {m['runner_up']['loss']:.4f}, "
                         f"margin {m['margin']:.4f})")
    r = recommendation(plan)
    whose = "the paper" if shape.is_paper else "the shape rule"
    approx = "" if float(r["n_layers"]).is_integer() else f" (real-valued L = d/{h} of {whose}; --realistic for integers)"
    lines += ["", f"recommended: E={r['experts']}, d_model={r['d_model']:.0f}, {_num(r['n_layers'])} layers, "
              f"{_num(r['n_heads'])} heads (head dim {h}), {r['tokens']:.3g} tokens, predicted loss {r['loss']:.4f}, "
              f"peak LR {r['lr']:.2e}{approx}"]
    if not shape.is_paper:
        lines.append("note: the peak LR is the paper's rule (SPEC §3), not part of this law's fit; check it with a "
                     "short LR sweep at this scale")
    return "\n".join(lines)


def write_plots(plan: dict, args: argparse.Namespace, out_dir: str) -> list[str]:
    """Loss vs FLOPs and N*, D* per E, and the memory-optimal E map, as PNGs in out_dir."""
    from moe_jax.paths import user_path
    from moe_jax.scaling import plots

    ctx = load_law_context(args.coeffs)
    law = ctx.law
    experts = [r["experts"] for r in plan["compute_optimal"]]
    out = user_path(out_dir)  # local or gs://
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create plot directory {out}: {err.strerror}") from None
    flops = plan["flops"]
    point = None
    if "memory_optimal" in plan:
        point = (flops, plan["memory_optimal"]["memory_params"])
    flops_range = (flops / 1e3, flops * 1e2)
    fitted = ctx.fitted if ctx.fitted_from_file else None  # the paper's law keeps the map's paper-scale axes
    paths = [
        plots.plot_loss_vs_flops(law, out / "loss_vs_flops.png", experts=experts, flops_range=flops_range,
                                 mark_flops=flops),
        plots.plot_compute_optimal(law, out / "compute_optimal.png", experts, flops_range, mark_flops=flops),
        plots.plot_memory_optimal_map(law, out / "memory_optimal_map.png", experts=experts, point=point,
                                      shape=ctx.shape, fitted=fitted),
    ]
    return [str(p) for p in paths]


def run(args: argparse.Namespace, extra: list[str]) -> int:
    reject_extra(extra)
    plan = build_plan(args)
    for line in plan["warnings"]:
        warn("plan", line)
    if args.plot:
        plan["plots"] = write_plots(plan, args, args.plot)
    if args.write_config:
        plan["config_file"] = str(write_plan_config(plan, recommendation(plan), args.write_config))
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print(format_plan(plan))
        for p in plan.get("plots", []):
            print(f"wrote {p}")
        if args.write_config:
            print(f"wrote {plan['config_file']}: moe-jax train --config {plan['config_file']} --workdir DIR")
    return 0
