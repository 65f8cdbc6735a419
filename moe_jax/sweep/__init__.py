"""moe_jax.sweep: scaling-law sweeps with checkpoint reuse (docs/sweeps.md).

  grid      grid files → runs (trunk / branch / control, with dependencies)
  registry  the SQLite run registry of a sweep directory
  runner    the launcher loop, its backend interface and the local subprocess backend
  results   a finished run's result; the runs CSV `moe-jax fit` reads
  status    progress table and ETA
  reuse     the reuse report: token and time ratios, branch-vs-control loss gaps, curves
  cli, cli_reuse  `moe-jax sweep …` and `moe-jax reuse-report`
"""
