"""A law's shape rule: which model a real-valued d_model stands for (layers = heads = d/head_dim,
SwiGLU hidden 3·d, an untied embedding and head over `vocab` tokens).

The paper's rule is `PAPER_RULE` (head dim 64, GPT-2 vocabulary 50257); a law fitted at another scale
(e.g. the CPU reproduction: head dim 16, byte vocabulary 259) carries its own rule in its fit JSON, and
`plan` sizes models with it. Counts are the paper's closed forms (`counting.paper_*`, norms excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moe_jax.errors import UserError
from moe_jax.scaling import constants, counting


@dataclass(frozen=True)
class ShapeRule:
    """layers = heads = d/head_dim, SwiGLU 3·d, vocabulary `vocab`. Methods are vectorised over numpy."""

    head_dim: int = constants.PAPER_HEAD_DIM
    vocab: int = constants.PAPER_VOCAB

    def __post_init__(self):
        for key in ("head_dim", "vocab"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise UserError(f"shape rule {key} must be an integer ≥ 1, got {value!r}")

    @property
    def is_paper(self) -> bool:
        return self == PAPER_RULE

    def layers(self, d_model):
        """Real-valued layer (= head) count d/head_dim."""
        return np.asarray(d_model, np.float64) / self.head_dim

    def n_act(self, d_model):
        """Active parameters 13·d²·L + 2·V·d with L = d/head_dim."""
        return counting.paper_n_act(d_model, self.layers(d_model), self.vocab)

    def n_total(self, d_model, experts):
        """Total parameters (4 + 9E)·d²·L + 2·V·d with L = d/head_dim."""
        return counting.paper_n_total(d_model, self.layers(d_model), experts, self.vocab)

    def kv_params_per_token(self, d_model):
        """KV cache per token in parameter units, 2·L·d."""
        return counting.paper_kv_params_per_token(d_model, self.layers(d_model))

    def d_for_params(self, n_params, experts=1, total: bool = False):
        """Real-valued d_model with n_params active (or total) parameters under this rule.

        Solves c·d³/h + 2·V·d = N with c = 13 (active) or 4 + 9E (total): one positive real root,
        written in the cancellation-free Cardano form t − p/(3t), t = cbrt(q/2 + sqrt(q²/4 + p³/27)).
        """
        n = np.asarray(n_params, np.float64)
        c = (4.0 + 9.0 * np.asarray(experts, np.float64)) if total else 13.0
        a = c / self.head_dim
        p, q = 2.0 * self.vocab / a, n / a  # d³ + p·d − q = 0
        t = np.cbrt(q / 2.0 + np.sqrt(q * q / 4.0 + p**3 / 27.0))
        return t - p / (3.0 * t)

    def describe(self) -> str:
        """'layers = d/16, head dim 16, vocab 259'."""
        return f"layers = d/{self.head_dim}, head dim {self.head_dim}, vocab {self.vocab}"

    def to_dict(self) -> dict[str, int]:
        return {"head_dim": int(self.head_dim), "vocab": int(self.vocab)}

    @classmethod
    def from_dict(cls, data, source: str = "shape_rule") -> "ShapeRule":
        """Read {"head_dim": h, "vocab": V}; a missing or bad value is a one-line UserError naming source and key."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: shape_rule must be an object like {{\"head_dim\": 64, \"vocab\": 50257}}, "
                            f"got {data!r}")
        values = {}
        for key in ("head_dim", "vocab"):
            value = data.get(key)
            number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
            if not (math.isfinite(number) and number >= 1 and number == int(number)):
                raise UserError(f"{source}: shape_rule.{key} = {value!r} must be an integer ≥ 1 "
                                f"(e.g. the paper's {getattr(PAPER_RULE, key)})")
            values[key] = int(number)
        return cls(**values)


PAPER_RULE = ShapeRule()
