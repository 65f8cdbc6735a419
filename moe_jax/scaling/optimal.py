"""Optimal configurations under a law (SPEC §4): compute-optimal per E, memory-constrained (the paper's
d_model sweep, or a realistic integer-shape variant), inference-aware budgets, and the
"E× tokens at equal total parameters" comparison.

Works with both law kinds of `moe_jax.scaling.law`. A Chinchilla law has no expert dependence, so
it only answers for E = 1 (asking it about E > 1 is a UserError rather than a silently E-blind answer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

from moe_jax.errors import UserError
from moe_jax.scaling import constants, counting
from moe_jax.scaling.shape_rule import PAPER_RULE, ShapeRule

# ---------------------------------------------------------------- input checks


def check_experts(law, experts) -> tuple[int, ...]:
    """Validate an expert list (integers ≥ 1, no repeats; a single number is a list of one) against the law."""
    if np.ndim(experts) == 0:
        experts = [experts]
    try:
        values = tuple(int(e) for e in experts)
    except (TypeError, ValueError):
        raise UserError(f"expert counts must be integers ≥ 1, got {experts!r}") from None
    if not values or any(e < 1 for e in values) or any(float(e) != float(x) for e, x in zip(values, experts)):
        raise UserError(f"expert counts must be integers ≥ 1, got {list(experts)!r}")
    if len(set(values)) != len(values):
        raise UserError(f"expert counts must not repeat, got {list(values)!r}")
    if law.kind == "chinchilla" and values != (1,):
        raise UserError(
            f"a Chinchilla law has no expert dependence; use experts = 1 or a joint law, got {list(values)!r}"
        )
    return values


# ---------------------------------------------------------------- shapes of a shape rule


def d_model_for_params(n_params, experts=1, total: bool = False, shape: ShapeRule = PAPER_RULE):
    """Real-valued d_model whose shape under `shape` (paper: L = d/64) has n_params active (or total) parameters."""
    return shape.d_for_params(n_params, experts, total)


# ---------------------------------------------------------------- compute-optimal


@dataclass(frozen=True)
class ComputeOptimal:
    """The compute-optimal point of one expert count at one budget."""

    experts: int
    n_act: float
    tokens: float
    loss: float
    flops: float
    inference_tokens: float = 0.0
    shape: ShapeRule = field(default=PAPER_RULE, repr=False)  # the rule d_model and layers are read under

    @property
    def d_model(self) -> float:
        """Real-valued d_model of the shape rule with this N_act."""
        return float(self.shape.d_for_params(self.n_act))

    @property
    def lr(self) -> float:
        return counting.lr_for(self.n_act, self.experts)

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["shape"]
        d.update(d_model=self.d_model, n_layers=float(self.shape.layers(self.d_model)), lr=self.lr)
        return d


def compute_optimal_closed_form(law, flops, experts: int = 1):
    """(N*, D*, L*) in closed form, vectorised over flops (SPEC §4).

    G = (α_E A_E / (β_E B_E))^(1/(α_E+β_E)), N* = G·(F/6)^(β_E/(α_E+β_E)), D* = (F/6)^(α_E/(α_E+β_E)) / G.
    """
    c = law.per_expert(experts)
    f6 = np.asarray(flops, np.float64) / 6.0
    s, g = _exponent_sum_and_g(c)
    n = g * f6 ** (c.beta / s)
    d = f6 ** (c.alpha / s) / g
    return n, d, c.loss(n, d)


def _exponent_sum_and_g(c) -> tuple[float, float]:
    """α+β and G = (αA/(βB))^(1/(α+β)) of a per-E Chinchilla law."""
    s = c.alpha + c.beta
    return s, (c.alpha * c.A / (c.beta * c.B)) ** (1.0 / s)


def compute_optimal_numeric(law, flops: float, experts: int = 1, inference_tokens: float = 0.0,
                            shape: ShapeRule = PAPER_RULE) -> ComputeOptimal:
    """Minimise L(N, D(N)) over log N with D(N) = (F − 2·N·D_inf)/(6·N): bounded 1-D search.

    The loss is convex in log N (sum of two exponentials of log N), so the bounded search is exact
    to its tolerance. With D_inf = 0 this is the closed form's cross-check.
    """
    flops = counting.parse_number("flops", flops)
    d_inf = counting.parse_number("inference tokens", inference_tokens, allow_zero=True)
    c = law.per_expert(experts)
    n_hi = flops / 6.0 if d_inf == 0 else flops / (2.0 * d_inf)  # D ≥ 1 token / inference fits

    def tokens(n):
        return (flops - 2.0 * n * d_inf) / (6.0 * n)

    def objective(x):
        n = math.exp(x)
        d = tokens(n)
        return float(c.loss(n, d)) if d > 0 else math.inf

    hi = math.log(n_hi) - 1e-9
    res = minimize_scalar(objective, bounds=(math.log(1.0), hi), method="bounded", options={"xatol": 1e-9})
    n = math.exp(float(res.x))
    return ComputeOptimal(int(experts), n, tokens(n), float(res.fun), flops, d_inf, shape)


def compute_optimal(law, flops: float, experts=constants.PAPER_EXPERTS, inference_tokens: float = 0.0,
                    shape: ShapeRule = PAPER_RULE):
    """Compute-optimal point per expert count: closed form, or numeric when inference tokens are given."""
    flops = counting.parse_number("flops", flops)
    d_inf = counting.parse_number("inference tokens", inference_tokens, allow_zero=True)
    experts = check_experts(law, experts)
    if d_inf > 0:
        n_min = smallest_n_act(shape)
        if flops <= 2.0 * n_min * d_inf * (1 + 1e-9):
            raise UserError(
                f"{d_inf:g} inference tokens spend the whole budget of {flops:g} FLOPs even on the smallest "
                f"model ({n_min:.3g} active params, {2 * n_min * d_inf:.3g} FLOPs); lower --inference-tokens"
            )
        rows = [compute_optimal_numeric(law, flops, e, d_inf, shape) for e in experts]
        _check_buildable(law, flops, rows, shape)
        return rows
    out = []
    for e in experts:
        n, d, loss = compute_optimal_closed_form(law, flops, e)
        out.append(ComputeOptimal(e, float(n), float(d), float(loss), flops, shape=shape))
    _check_buildable(law, flops, out, shape)
    return out


def smallest_n_act(shape: ShapeRule = PAPER_RULE) -> float:
    """N_act of the smallest model of a shape rule: d_model = head_dim, one layer."""
    return float(counting.paper_n_act(shape.head_dim, 1, shape.vocab))


def _rule_name(shape: ShapeRule) -> str:
    return "paper-shape" if shape.is_paper else "shape-rule"


def _check_buildable(law, flops: float, rows: list[ComputeOptimal], shape: ShapeRule = PAPER_RULE) -> None:
    """UserError when a compute-optimal model is smaller than the rule's smallest (d_model = head_dim, 1 layer)."""
    n_min = smallest_n_act(shape)
    small = [r for r in rows if r.n_act < n_min]
    if not small:
        return
    # The budget at which every requested E reaches n_min (closed form, no inference tokens).
    need = _round_up_2_digits(max(min_flops_for_n_act(law, n_min, r.experts) for r in rows))
    worst = min(small, key=lambda r: r.n_act)
    extra = " without inference tokens" if worst.inference_tokens else ""
    raise UserError(
        f"a budget of {flops:g} FLOPs is too small: its compute-optimal E={worst.experts} model has N_act "
        f"{worst.n_act:.3g} (d_model {worst.d_model:.0f}), below the smallest {_rule_name(shape)} model "
        f"(d_model {shape.head_dim}, 1 layer, N_act {n_min:.3g}); use --flops ≥ {need:.2g}{extra}"
    )


def _round_up_2_digits(x: float) -> float:
    """6.31e16 → 6.4e16: a bound that stays a bound when printed with 2 significant digits."""
    unit = 10.0 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / unit) * unit


def min_flops_for_n_act(law, n_act: float, experts: int = 1) -> float:
    """The budget whose compute-optimal N* equals n_act (inverse of the closed form)."""
    c = law.per_expert(experts)
    s, g = _exponent_sum_and_g(c)
    return 6.0 * (n_act / g) ** (s / c.beta)


# ---------------------------------------------------------------- memory-constrained optimum


@dataclass(frozen=True)
class MemoryCandidate:
    """The best d_model of one expert count under the memory budget."""

    experts: int
    d_model: int
    n_layers: float  # d/head_dim: real-valued in the paper's procedure, an integer in realistic mode
    n_heads: float
    n_act: float
    n_total: float
    kv_params: float
    tokens: float
    loss: float

    @property
    def lr(self) -> float:
        return counting.lr_for(self.n_act, self.experts)

    def to_dict(self) -> dict:
        return {**asdict(self), "lr": self.lr}


@dataclass(frozen=True)
class MemoryOptimal:
    """Argmin of the loss over (E, d_model) under N_total + KV ≤ M, with the best other E as runner-up."""

    best: MemoryCandidate
    runner_up: MemoryCandidate | None
    margin: float | None  # runner-up loss − best loss
    per_expert: list[MemoryCandidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = self.best.to_dict()
        out["runner_up"] = None if self.runner_up is None else {
            "experts": self.runner_up.experts, "loss": self.runner_up.loss, "d_model": self.runner_up.d_model}
        out["margin"] = self.margin
        out["per_expert"] = [c.to_dict() for c in self.per_expert]
        return out


def smallest_model_params(experts=1, kv_tokens: float = 0.0, shape: ShapeRule = PAPER_RULE) -> float:
    """N_total + KV of the smallest model the sweep considers (d = head_dim, one layer)."""
    d = shape.head_dim
    return float(counting.paper_n_total(d, 1, experts, shape.vocab)
                 + kv_tokens * counting.paper_kv_params_per_token(d, 1))


MAX_SWEEP_D_MODEL = 2**17  # dense N_total ≈ 4.6e14: far past any real memory, and a sweep of 131k widths per E


def _sweep(law, flops, memory_params, experts, kv_tokens, inference_tokens, realistic, shape: ShapeRule):
    """Loss over the (E, d) grid; infeasible cells are +inf.

    Shapes: d [Nd], n_act [Nd], n_total/kv/tokens/loss [E, Nd] (flops scalar) or loss [F, E, Nd].
    """
    step = shape.head_dim if realistic else 1
    lo = shape.head_dim
    # Upper end: the largest d whose dense model fits the memory and still gets ≥ 1 training token.
    f_max = float(np.max(flops))
    hi_mem = float(shape.d_for_params(memory_params, 1, total=True))
    hi_flops = float(shape.d_for_params(f_max / 6.0))
    hi = int(max(lo, min(hi_mem, hi_flops))) + 1
    if hi > MAX_SWEEP_D_MODEL:
        top = float(shape.n_total(MAX_SWEEP_D_MODEL, 1))
        raise UserError(
            f"memory of {memory_params:.3g} parameters and a budget of {f_max:.3g} FLOPs admit models up to d_model "
            f"{hi:,}, beyond the sweep's limit of d_model {MAX_SWEEP_D_MODEL:,}; lower --memory to at most "
            f"{top:.3g} parameters ({2 * top / 1e12:.3g} TB at 2 B/param) or lower --flops"
        )
    d = np.arange(lo, hi + 1, step, dtype=np.float64)  # [Nd]
    layers = shape.layers(d)  # [Nd]
    e = np.asarray(experts, np.float64)[:, None]  # [E, 1]
    n_act = counting.paper_n_act(d, layers, shape.vocab)  # [Nd]
    n_total = counting.paper_n_total(d, layers, e, shape.vocab)  # [E, Nd]
    kv = kv_tokens * counting.paper_kv_params_per_token(d, layers)  # [Nd]
    fits = n_total + kv <= memory_params  # [E, Nd]
    f = np.asarray(flops, np.float64)[..., None, None]  # [..., 1, 1]
    tokens = (f - 2.0 * n_act * inference_tokens) / (6.0 * n_act)  # [..., 1, Nd]
    ok = fits & (tokens >= 1.0)  # [..., E, Nd]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        loss = np.where(ok, law.loss(n_act, np.where(tokens >= 1.0, tokens, 1.0), e), np.inf)
    return d, layers, n_act, n_total, kv, np.broadcast_to(tokens, loss.shape), loss


def memory_optimal(
    law,
    flops: float,
    memory_params: float,
    experts=constants.PAPER_EXPERTS,
    kv_tokens: float = 0.0,
    inference_tokens: float = 0.0,
    realistic: bool = False,
    shape: ShapeRule = PAPER_RULE,
) -> MemoryOptimal:
    """The paper's memory-constrained optimum (SPEC §4), under a shape rule (paper: head dim h = 64).

    For each E sweep integer d_model ≥ h with L = d/h (real-valued; `realistic`: d a multiple of h,
    so L and the head count are integers with head dim h), keep N_total + K·2·L·d ≤ M, train on
    D = (F − 2·N_act·D_inf)/(6·N_act) tokens, and take the argmin of the loss over all (E, d).
    """
    flops = counting.parse_number("flops", flops)
    memory_params = counting.parse_number("memory", memory_params)
    kv_tokens = counting.parse_number("KV-cache tokens", kv_tokens, allow_zero=True)
    inference_tokens = counting.parse_number("inference tokens", inference_tokens, allow_zero=True)
    experts = check_experts(law, experts)
    smallest = smallest_model_params(min(experts), kv_tokens, shape)
    if memory_params < smallest:
        raise UserError(
            f"memory of {memory_params:.4g} parameters is too small for any model: the smallest "
            f"(d_model {shape.head_dim}, 1 layer, E={min(experts)}{', with its KV cache' if kv_tokens else ''}) "
            f"needs {smallest:.4g} parameters"
        )
    d, layers, n_act, n_total, kv, tokens, loss = _sweep(
        law, flops, memory_params, experts, kv_tokens, inference_tokens, realistic, shape)
    if not np.isfinite(loss).any():
        if inference_tokens > 0:
            raise UserError(
                f"{inference_tokens:g} inference tokens spend the whole budget of {flops:g} FLOPs on every model "
                f"that fits the memory; lower --inference-tokens or raise --flops"
            )
        raise UserError(f"a budget of {flops:g} FLOPs cannot train any model that fits (not even one token)")
    per_expert = []
    for i, e in enumerate(experts):
        j = int(np.argmin(loss[i]))
        if not np.isfinite(loss[i, j]):
            continue
        per_expert.append(MemoryCandidate(
            experts=e,
            d_model=int(d[j]),
            n_layers=int(layers[j]) if realistic else float(layers[j]),
            n_heads=int(layers[j]) if realistic else float(layers[j]),
            n_act=float(n_act[j]),
            n_total=float(n_total[i, j]),
            kv_params=float(kv[j]),
            tokens=float(tokens[i, j]),
            loss=float(loss[i, j]),
        ))
    ranked = sorted(per_expert, key=lambda c: c.loss)
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    margin = None if runner_up is None else runner_up.loss - best.loss
    return MemoryOptimal(best, runner_up, margin, per_expert)


def memory_optimal_grid(
    law,
    flops_values,
    memory_values,
    experts=constants.PAPER_EXPERTS,
    kv_tokens: float = 0.0,
    inference_tokens: float = 0.0,
    realistic: bool = False,
    shape: ShapeRule = PAPER_RULE,
):
    """Memory-optimal E over a grid: array [len(memory_values), len(flops_values)], 0 where nothing fits."""
    experts = check_experts(law, experts)
    flops_values = np.asarray(flops_values, np.float64)  # [F]
    out = np.zeros((len(memory_values), len(flops_values)), dtype=np.int64)
    for r, m in enumerate(memory_values):
        if m < smallest_model_params(min(experts), kv_tokens, shape):
            continue
        *_, loss = _sweep(law, flops_values, float(m), experts, kv_tokens, inference_tokens, realistic, shape)
        best = loss.reshape(len(flops_values), -1)  # [F, E·Nd]
        idx = np.argmin(best, axis=1)  # [F]
        feasible = np.isfinite(best[np.arange(len(flops_values)), idx])
        out[r] = np.where(feasible, np.asarray(experts)[idx // loss.shape[-1]], 0)
    return out


# ---------------------------------------------------------------- E× tokens at equal total parameters


def equal_total_params_comparison(law, flops: float, experts: int, shape: ShapeRule = PAPER_RULE) -> dict:
    """SPEC §4 rule of thumb: the compute-optimal dense model (N*, D*) against an E-expert MoE with the
    same total parameters (the shape rule, real-valued d) trained on E·D* tokens.

    Returns both configurations with their losses and FLOPs; "moe_wins" is loss_moe < loss_dense.
    """
    flops = counting.parse_number("flops", flops)
    check_experts(law, (1, experts) if experts != 1 else (1,))
    n_dense, d_dense, l_dense = (float(x) for x in compute_optimal_closed_form(law, flops, 1))
    d_moe = float(shape.d_for_params(n_dense, experts, total=True))
    n_act_moe = float(shape.n_act(d_moe))
    tokens_moe = experts * d_dense
    l_moe = float(law.loss(n_act_moe, tokens_moe, experts))
    return {
        "experts": int(experts),
        "n_total": n_dense,
        "dense": {"n_act": n_dense, "tokens": d_dense, "loss": l_dense, "flops": 6.0 * n_dense * d_dense},
        "moe": {
            "d_model": d_moe,
            "n_act": n_act_moe,
            "tokens": tokens_moe,
            "loss": l_moe,
            "flops": 6.0 * n_act_moe * tokens_moe,
        },
        "moe_wins": l_moe < l_dense,
        "margin": l_dense - l_moe,
    }
