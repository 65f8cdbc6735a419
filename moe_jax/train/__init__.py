"""moe_jax.train."""
