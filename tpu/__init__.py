"""Launching on Cloud TPU (installed as `moe_jax.tpu`)."""
