"""moe_jax.parallel."""
