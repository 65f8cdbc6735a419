"""moe_jax.sweep."""
