"""moe_jax.kernels."""
