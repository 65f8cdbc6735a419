"""Every number the paper (and its reference fits) gives, with its source. One module, nothing else.

Sources:
  [JMSL]  Ludziejewski et al., "Joint MoE Scaling Laws", arXiv 2502.05172 (ICML 2025), as checked
          against the authors' notebook and configs (shared/SPEC.md; the code's sign convention).
  [H22]   Hoffmann et al., "Training Compute-Optimal LLMs", 2022 (rounded published fit).
  [E24]   Besiroglu et al. (Epoch AI), "Chinchilla Scaling: A replication attempt", 2024.
"""

from __future__ import annotations

import math
from pathlib import Path

# [JMSL] SPEC §1: published joint-law coefficients, full precision.
JOINT_PAPER2025: dict[str, float] = {
    "A": 35.907456,
    "alpha": 0.18893,
    "delta": 0.228513,
    "gamma": -0.009798,
    "B": 35.979302,
    "beta": 0.177532,
    "omega": -0.552916,
    "zeta": 0.02585,
    "C": 1.36374,
    "ln_estart": 0.729077,
    "ln_emax": 5.671439,
}

# [JMSL] SPEC §1: the code adds this offset to E in the saturating transform.
E_HAT_OFFSET = 0.99

# [H22] Approach 3 fit as printed (rounded). L = C + A/N^alpha + B/D^beta.
CHINCHILLA_HOFFMANN2022: dict[str, float] = {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "C": 1.69}

# [E24] Epoch AI's replication fit (their Table 1).
CHINCHILLA_EPOCH2024: dict[str, float] = {"A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658, "C": 1.8172}

# [JMSL] SPEC §3: model shape rule and vocabulary.
PAPER_HEAD_DIM = 64
PAPER_FFN_MULT = 3  # SwiGLU hidden size = 3 * d_model
PAPER_VOCAB = 50257  # GPT-2 BPE

# [JMSL] SPEC §3: LR(N, E) = exp(c0 + c1 ln N + c2 ln E), N incl. embeddings, E raw expert count.
LR_RULE = (8.391640956234012, -0.8121798244457074, -0.25)

# [JMSL] SPEC §4: expert counts searched by the memory-constrained optimum.
PAPER_EXPERTS = (1, 2, 4, 8, 16, 32)

# [JMSL] SPEC §5: token budgets (B tokens) of the checkpoint-reuse trunk/cooldown scheme.
PAPER_TOKEN_BUDGETS_B = (0.5, 1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128)
PAPER_COOLDOWN_FRACTION = 0.2  # linear decay to 0 over the last 20 % of tokens
PAPER_WARMUP_TOKENS = 130e6

# [JMSL] SPEC §5: grid shapes, name -> (d_model, n_layers, n_heads); head dim = d_model / n_heads.
PAPER_SHAPES: dict[str, tuple[int, int, int]] = {
    "d512": (512, 8, 8),
    "d576": (576, 9, 9),
    "d640": (640, 10, 10),
    "d704": (704, 11, 11),
    "d768": (768, 12, 12),
    "d832": (832, 13, 13),
    "d1024": (1024, 16, 16),
    "d1152": (1152, 18, 18),
    "d1280_L16": (1280, 16, 10),
    "d1280": (1280, 20, 20),
    "d1408_L21": (1408, 21, 11),
    "d1408": (1408, 22, 22),
    "d1536": (1536, 24, 24),
    "d1664": (1664, 26, 26),
    "d1792": (1792, 28, 28),
    "d1920": (1920, 30, 30),
    "d2304": (2304, 36, 36),
}

# [JMSL] SPEC §2: fit residual weights w ∝ (log L)^WEIGHT_POWER; Huber deltas.
JOINT_WEIGHT_POWER = -30.0
JOINT_HUBER_DELTA = 0.01
CHINCHILLA_HUBER_DELTA = 1e-3
JOINT_L2_PENALTY = 1e-5


def lr_rule(n_act: float, experts: float) -> float:
    """Peak learning rate of the paper's rule (SPEC §3)."""
    c0, c1, c2 = LR_RULE
    return math.exp(c0 + c1 * math.log(n_act) + c2 * math.log(experts))


# Epoch AI's reconstruction of Hoffmann et al. (2022) Fig. 4: 245 (N, D, loss) points, shipped in the
# package (provenance: moe_jax/scaling/data/README.md). The SPEC §2 grid-fit reference data.
EPOCH2024_CSV = Path(__file__).resolve().parent / "data" / "chinchilla_epoch2024.csv"
