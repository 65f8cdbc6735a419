"""Built-in sweep grids (installed as `moe_jax.configs.grids`)."""
