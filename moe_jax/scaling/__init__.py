"""Scaling laws, counting, fitting and optimal configurations: numpy/scipy only, never imports JAX."""
