"""Packaged ml_collections configs (installed as `moe_jax.configs`): name them on the command line as
`tiny`, `demo:moe`, `paper:d512_E8`, or give the path of your own `.py` file."""
