"""moe_jax.data."""
