"""Counting parameters, FLOPs and memory (SPEC §3), for the paper's formula and for any real shape.

Two levels:
  * the paper's closed forms (`paper_n_act`, `paper_n_total`), used by the law and the optimisers;
  * `ModelShape.counts()`, exact for the model `moe_jax.model` builds (any vocab, depth, width, head
    size, norms, router), which tests check against the built parameter tree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from moe_jax.errors import UserError
from moe_jax.scaling import constants

# ---------------------------------------------------------------- the paper's closed forms (SPEC §3)


def paper_n_act(d_model, n_layers, vocab=constants.PAPER_VOCAB):
    """N_act = 13·d²·L + 2·V·d (attention 4d², one SwiGLU expert 9d², untied embedding and head)."""
    d = np.asarray(d_model, np.float64)
    return 13.0 * d * d * n_layers + 2.0 * vocab * d


def paper_n_total(d_model, n_layers, experts, vocab=constants.PAPER_VOCAB):
    """N_total = (4 + 9E)·d²·L + 2·V·d."""
    d = np.asarray(d_model, np.float64)
    return (4.0 + 9.0 * np.asarray(experts, np.float64)) * d * d * n_layers + 2.0 * vocab * d


def paper_kv_params_per_token(d_model, n_layers):
    """KV cache per token in parameter units: K and V of every layer, 2·L·d."""
    return 2.0 * np.asarray(n_layers, np.float64) * np.asarray(d_model, np.float64)


def training_flops(n_act, tokens):
    """F = 6·N_act·D (embeddings included; attention scores and router not counted)."""
    return 6.0 * np.asarray(n_act, np.float64) * np.asarray(tokens, np.float64)


def inference_flops(n_act, tokens=1.0):
    """2·N_act per generated/processed token."""
    return 2.0 * np.asarray(n_act, np.float64) * np.asarray(tokens, np.float64)


def attention_flops_per_token(n_layers, n_heads, head_dim, seq_len):
    """Training FLOPs/token of the attention scores and weighted sum (QK^T and AV, fwd+bwd, causal avg).

    Per layer and token, forward: 2·S·H·Dh for QK^T and the same for AV over the full square; the
    causal mask halves the useful work on average, and ×3 for forward+backward: 6·S·H·Dh per layer.
    """
    return 6.0 * n_layers * seq_len * n_heads * head_dim


def lr_for(n_act, experts):
    """The paper's peak LR rule (SPEC §3)."""
    return constants.lr_rule(n_act, experts)


# ---------------------------------------------------------------- memory units

_MEMORY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {
    "b": 1,
    "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_memory(text: str) -> float:
    """'80GB' → 8e10 bytes (decimal units as the paper uses; GiB etc. binary). A bare number is bytes."""
    m = _MEMORY_RE.match(str(text))
    if not m:
        raise UserError(f"cannot parse memory {text!r}: use e.g. 24GB, 80GB, 640GB, 96GiB or a byte count")
    value = float(m.group(1)) * _UNIT_BYTES[(m.group(2) or "B").lower()]
    if value <= 0:
        raise UserError(f"memory must be positive, got {text!r}; use e.g. 24GB or 80GB")
    return value


def memory_in_params(memory_bytes: float, bytes_per_param: float = 2.0) -> float:
    """How many parameters fit in a memory (24 GB at 2 B/param → 12e9)."""
    if bytes_per_param <= 0:
        raise UserError(f"bytes per parameter must be positive, got {bytes_per_param}")
    return memory_bytes / bytes_per_param


# ---------------------------------------------------------------- exact counts of a real shape


@dataclass(frozen=True)
class ModelShape:
    """The shape of a model `moe_jax.model` builds. Counting here must match the built parameter tree."""

    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    ffn_hidden: int
    experts: int = 1
    top_k: int = 1
    vocab: int = constants.PAPER_VOCAB
    norm: str = "layernorm"  # "layernorm" (scale + bias) or "rmsnorm" (scale)
    final_norm: bool = False

    @classmethod
    def paper(cls, d_model: int, experts: int = 1, vocab: int = constants.PAPER_VOCAB, n_layers=None, n_heads=None):
        """The paper's shape rule: layers = heads = d/64, head dim 64, SwiGLU hidden 3·d."""
        n_heads = n_heads or d_model // constants.PAPER_HEAD_DIM
        return cls(
            d_model=d_model,
            n_layers=n_layers or d_model // constants.PAPER_HEAD_DIM,
            n_heads=n_heads,
            head_dim=d_model // n_heads,
            ffn_hidden=constants.PAPER_FFN_MULT * d_model,
            experts=experts,
            vocab=vocab,
        )

    def counts(self) -> dict[str, int]:
        """n_act, n_total, n_embedding (input table + head), n_router, n_norm (all exact integers).

        n_act and n_total include embedding, head and norms and exclude the router, as the law's N does;
        n_router is reported separately (0 for E = 1, which has no router).
        """
        d, L = self.d_model, self.n_layers
        attn = 4 * d * self.n_heads * self.head_dim
        expert = 3 * d * self.ffn_hidden
        norm_size = 2 * d if self.norm == "layernorm" else d
        norms = 2 * L * norm_size + (norm_size if self.final_norm else 0)
        embedding = 2 * self.vocab * d
        router = d * self.experts * L if self.experts > 1 else 0
        active_experts = min(self.top_k, self.experts)
        n_act = L * (attn + active_experts * expert) + embedding + norms
        n_total = L * (attn + self.experts * expert) + embedding + norms
        return {
            "n_act": n_act,
            "n_total": n_total,
            "n_embedding": embedding,
            "n_router": router,
            "n_norm": norms,
        }

    def flops_per_token(self, seq_len: int) -> dict[str, float]:
        """Training FLOPs per token: 6·N_act, and the variant with attention-score FLOPs added."""
        six_n = 6.0 * self.counts()["n_act"]
        return {
            "flops_per_token": six_n,
            "flops_per_token_with_attention": six_n
            + attention_flops_per_token(self.n_layers, self.n_heads, self.head_dim, seq_len),
        }


def format_count(x: float) -> str:
    """1.234e9 → '1.23B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def parse_number(name: str, value, *, allow_zero: bool = False, example: str | None = None) -> float:
    """A finite number > 0 (≥ 0 with `allow_zero`) from a number or a flag's text, else a one-line UserError
    naming `name`, the value and, given `example`, a valid one: "…, got '-1e22'; e.g. --flops 1e22"."""
    hint = f"; e.g. {name} {example}" if example else ""
    if value is None:
        raise UserError(f"{name} is required{hint}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}{hint}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        valid = "a finite number ≥ 0" if allow_zero else "a finite positive number"
        raise UserError(f"{name} must be {valid}, got {value!r}{hint}")
    return x


def is_positive_finite(x) -> bool:
    try:
        return math.isfinite(float(x)) and float(x) > 0
    except (TypeError, ValueError):
        return False
