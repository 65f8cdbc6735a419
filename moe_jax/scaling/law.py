"""The joint MoE law L(N, D, E), the Chinchilla law L(N, D), the Ê transform, named coefficient sets.

All predictions are vectorised over numpy-broadcastable inputs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields

import numpy as np

from moe_jax.errors import UserError
from moe_jax.paths import user_path
from moe_jax.scaling import constants

CHINCHILLA_KEYS = ("A", "alpha", "B", "beta", "C")
JOINT_KEYS = ("A", "alpha", "delta", "gamma", "B", "beta", "omega", "zeta", "C", "ln_estart", "ln_emax")


def e_hat(experts, ln_estart: float, ln_emax: float):
    """Saturating transformed expert count (SPEC §1): 1/Ê = 1/(E − 0.99 + (1/Es − 1/Em)^−1) + 1/Em."""
    e = np.asarray(experts, dtype=np.float64)
    inv_start, inv_max = math.exp(-ln_estart), math.exp(-ln_emax)
    shift = 1.0 / (inv_start - inv_max)
    return 1.0 / (1.0 / (e - constants.E_HAT_OFFSET + shift) + inv_max)


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = C + A·N^−α + B·D^−β."""

    A: float
    alpha: float
    B: float
    beta: float
    C: float

    kind = "chinchilla"

    def loss(self, n_act, tokens, experts=None):
        n, d = np.asarray(n_act, np.float64), np.asarray(tokens, np.float64)
        return self.C + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    def per_expert(self, experts=1) -> "ChinchillaLaw":
        return self

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class JointLaw:
    """L(N, D, E) = A·Ê^−δ·N^−(α+γ lnÊ) + B·Ê^−ω·D^−(β+ζ lnÊ) + C (SPEC §1)."""

    A: float
    alpha: float
    delta: float
    gamma: float
    B: float
    beta: float
    omega: float
    zeta: float
    C: float
    ln_estart: float
    ln_emax: float

    kind = "joint"

    def e_hat(self, experts):
        return e_hat(experts, self.ln_estart, self.ln_emax)

    def coefficients(self, experts):
        """Per-E Chinchilla coefficients (A(E), α(E), B(E), β(E)), vectorised over E."""
        eh = self.e_hat(experts)
        log_eh = np.log(eh)
        return (
            self.A * eh ** (-self.delta),
            self.alpha + self.gamma * log_eh,
            self.B * eh ** (-self.omega),
            self.beta + self.zeta * log_eh,
        )

    def loss(self, n_act, tokens, experts=1):
        n, d = np.asarray(n_act, np.float64), np.asarray(tokens, np.float64)
        a, alpha, b, beta = self.coefficients(experts)
        return a * n ** (-alpha) + b * d ** (-beta) + self.C

    def per_expert(self, experts: float) -> ChinchillaLaw:
        """The Chinchilla law this joint law reduces to at a fixed expert count."""
        a, alpha, b, beta = (float(x) for x in self.coefficients(experts))
        return ChinchillaLaw(A=a, alpha=alpha, B=b, beta=beta, C=self.C)

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


NAMED_SETS = {
    "paper2025": lambda: JointLaw(**constants.JOINT_PAPER2025),
    "hoffmann2022": lambda: ChinchillaLaw(**constants.CHINCHILLA_HOFFMANN2022),
    "epoch2024": lambda: ChinchillaLaw(**constants.CHINCHILLA_EPOCH2024),
}


def law_from_dict(coeffs: dict, source: str = "coefficients") -> ChinchillaLaw | JointLaw:
    """Build a law from a dict of named coefficients (joint if it has the joint keys)."""
    if not isinstance(coeffs, dict):
        raise UserError(f"{source}: expected a JSON object of coefficients, got {type(coeffs).__name__}")
    keys = JOINT_KEYS if "delta" in coeffs or "ln_emax" in coeffs else CHINCHILLA_KEYS
    missing = [k for k in keys if k not in coeffs]
    if missing:
        raise UserError(f"{source}: missing coefficient(s) {', '.join(missing)}; a law needs {', '.join(keys)}")
    values = {}
    for k in keys:
        try:
            values[k] = float(coeffs[k])
        except (TypeError, ValueError):
            raise UserError(f"{source}: coefficient {k}={coeffs[k]!r} is not a number") from None
        if not math.isfinite(values[k]):
            raise UserError(f"{source}: coefficient {k}={values[k]} is not finite")
    law = (JointLaw if keys is JOINT_KEYS else ChinchillaLaw)(**values)
    check_law(law, source)
    return law


def check_law(law, source: str = "coefficients") -> None:
    """Reject coefficients whose law is not a decreasing power law on the paper's E range (one line each).

    A, B > 0, C ≥ 0; exponents α(E), β(E) > 0 for E in 1..32; for a joint law ln E_start < ln E_max
    (otherwise Ê is undefined and the loss NaN).
    """
    for k in ("A", "B"):
        if getattr(law, k) <= 0:
            raise UserError(f"{source}: coefficient {k}={getattr(law, k):g} must be > 0")
    if law.C < 0:
        raise UserError(f"{source}: coefficient C={law.C:g} must be ≥ 0 (the irreducible loss)")
    if law.kind == "joint" and not law.ln_estart < law.ln_emax:
        raise UserError(
            f"{source}: ln_estart={law.ln_estart:g} must be below ln_emax={law.ln_emax:g} (E_start < E_max), "
            f"e.g. the paper's {constants.JOINT_PAPER2025['ln_estart']} < {constants.JOINT_PAPER2025['ln_emax']}"
        )
    experts = np.arange(1, max(constants.PAPER_EXPERTS) + 1)
    _, alpha, _, beta = law.coefficients(experts) if law.kind == "joint" else (0, law.alpha, 0, law.beta)
    for name, value in (("alpha", alpha), ("beta", beta)):
        value = np.broadcast_to(value, experts.shape)
        if not np.all(value > 0):
            at = int(experts[np.argmin(value)])
            where = f" at E={at}" if law.kind == "joint" else ""
            raise UserError(f"{source}: exponent {name}{where} is {float(np.min(value)):g}; it must be > 0")


def load_law(spec: str) -> ChinchillaLaw | JointLaw:
    """A named set (paper2025, hoffmann2022, epoch2024) or a JSON file written by `moe-jax fit`.

    The JSON may hold the coefficients at top level or under a "coefficients" key.
    """
    return load_law_document(spec)[0]


def load_law_document(spec: str) -> tuple[ChinchillaLaw | JointLaw, dict | None]:
    """The law of `spec` (see load_law) and the whole JSON object it came from (None for a named set)."""
    if spec in NAMED_SETS:
        return NAMED_SETS[spec](), None
    path = user_path(spec)  # a local file or gs://BUCKET/fit.json
    if not path.exists():
        if path.suffix.lower() == ".json" or "/" in spec or "\\" in spec:
            raise UserError(f"coefficient file {spec} not found: give an existing JSON file from `moe-jax fit` "
                            f"or one of {', '.join(NAMED_SETS)}")
        raise UserError(
            f"unknown coefficient set {spec!r}: use one of {', '.join(NAMED_SETS)} or a JSON file from `moe-jax fit`"
        )
    if path.is_dir():
        raise UserError(f"coefficient path {spec} is a directory: give the fit.json inside it or one of "
                        f"{', '.join(NAMED_SETS)}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read coefficients from {path}: {err}") from None
    coeffs = data["coefficients"] if isinstance(data, dict) and isinstance(data.get("coefficients"), dict) else data
    return law_from_dict(coeffs, source=str(path)), data
