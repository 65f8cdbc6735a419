"""moe_jax: the Joint MoE Scaling Laws (Ludziejewski et al., 2025) in JAX/Flax.

Subpackages, one job each (see DESIGN.md):
  scaling/  laws, counting, fitter, optimal plans, plots (numpy/scipy only, no JAX)
  model/    Flax NNX MoE transformer
  kernels/  token dispatch and grouped matmul
  parallel/ meshes and sharding rules
  data/     seqio tasks, vocabulary, resumable batches
  train/    optimizer, schedules, train loop, checkpoints, metrics
  sweep/    grids, run registry, result collection
"""

__version__ = "0.1.0"
