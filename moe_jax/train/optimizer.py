"""AdamW with global-norm clipping (SPEC §5); the LR is an optimizer-state leaf set by each step."""

from __future__ import annotations

import optax

from moe_jax.scaling import counting


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) → AdamW(β1, β2, eps, weight decay on ALL params).

    The learning rate is injected (`opt_state.hyperparams['learning_rate']`) so the host-side,
    token-based schedule can set it each step without re-tracing; it is checkpointed with the state.
    """

    def chain(learning_rate):
        return optax.chain(
            optax.clip_by_global_norm(train_cfg.grad_clip),
            optax.adamw(learning_rate, b1=train_cfg.adam_b1, b2=train_cfg.adam_b2, eps=train_cfg.adam_eps,
                        weight_decay=train_cfg.weight_decay, mask=None),
        )

    return optax.inject_hyperparams(chain)(learning_rate=0.0)


def peak_learning_rate(train_cfg, n_act: int, experts: int) -> float:
    """train.learning_rate if set (> 0), else the paper's rule LR(N_act, E) (SPEC §3)."""
    if train_cfg.learning_rate > 0:
        return float(train_cfg.learning_rate)
    return counting.lr_for(n_act, experts)
