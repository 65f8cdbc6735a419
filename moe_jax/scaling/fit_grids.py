"""Named multi-start grids for the fitter, as arrays of parameter vectors θ [S, P].

θ order (see `fit_model`): Chinchilla (log A, α, log B, β, log C);
joint (log A, α, δ, γ, log B, β, ω, ζ, log C, ln E_start, ln E_max).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from moe_jax.errors import UserError

GRID_NAMES = ("paper", "epoch", "small")


def _product(*axes) -> np.ndarray:
    return np.asarray(list(itertools.product(*axes)), np.float64)


def _paper_joint(small: bool) -> np.ndarray:
    """SPEC §2: α, β ∈ {.05,.25,.5}; A, B ∈ {30,100,300}; C ∈ {.5,1,2}; δ, γ, ω, ζ ∈ {−.5,0,.5};
    E_start = 1, E_max = 300. 3^9 = 19,683 starts. `small` (72 starts): δ = γ = ω = ζ = 0,
    A, B ∈ {30, 300}, C ∈ {1, 2}."""
    log3 = [math.log(v) for v in (30.0, 100.0, 300.0)]
    pw = [0.05, 0.25, 0.5]
    log_c = [math.log(v) for v in (0.5, 1.0, 2.0)]
    pm = [-0.5, 0.0, 0.5]
    if small:
        log3, pm = [math.log(30.0), math.log(300.0)], [0.0]
        log_c = [0.0, math.log(2.0)]
    grid = _product(log3, pw, pm, pm, log3, pw, pm, pm, log_c)
    es = np.zeros((len(grid), 1))
    em = np.full((len(grid), 1), math.log(300.0))
    return np.hstack([grid, es, em])


def _epoch_chinchilla(small: bool) -> np.ndarray:
    """Hoffmann/Epoch: α, β ∈ {0, .5, …, 2}; log E ∈ {−1, −.5, …, 1}; log A, log B ∈ {0, 5, …, 25}:
    4,500 starts. `small`: α, β ∈ {.5, 1}; log E ∈ {0, .5}; log A, log B ∈ {5, 10}."""
    if small:
        ab, le, lab = [0.5, 1.0], [0.0, 0.5], [5.0, 10.0]
    else:
        ab = list(np.arange(0.0, 2.01, 0.5))
        le = list(np.arange(-1.0, 1.01, 0.5))
        lab = list(np.arange(0.0, 25.01, 5.0))
    # itertools order (log A, α, log B, β, log E) = θ order.
    return _product(lab, ab, lab, ab, le)


def start_grid(name: str, kind: str) -> np.ndarray:
    """The named grid for a law kind. `paper` is the joint grid; for Chinchilla it is its 5-D part
    (A, α, B, β, C from the paper's axes, 243 starts). `epoch` for the joint law extends the Epoch
    grid with δ = γ = ω = ζ = 0, E_start = 1, E_max = 300."""
    if name not in GRID_NAMES:
        raise UserError(f"unknown start grid {name!r}: use one of {', '.join(GRID_NAMES)}")
    if kind == "joint":
        if name == "epoch":
            base = _epoch_chinchilla(small=False)
            zeros = np.zeros((len(base), 2))
            return np.hstack([base[:, :2], zeros, base[:, 2:4], zeros, base[:, 4:],
                              np.zeros((len(base), 1)), np.full((len(base), 1), math.log(300.0))])
        return _paper_joint(small=(name == "small"))
    if name == "paper":
        joint = _paper_joint(small=False)
        return np.unique(joint[:, [0, 1, 4, 5, 8]], axis=0)
    return _epoch_chinchilla(small=(name == "small"))
