"""moe_jax.model."""
