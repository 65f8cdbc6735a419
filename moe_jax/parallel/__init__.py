"""moe_jax.parallel: the device mesh, the logical-axis → mesh-axis rules, expert-parallel dispatch, multi-host
start-up and ahead-of-time compilation for a mesh (docs/parallelism.md).

    from moe_jax.parallel.mesh import build_mesh         # data × fsdp × expert × tensor, Auto axes
    from moe_jax.parallel.rules import state_shardings   # params and every optimizer leaf, by RULES

`mesh` imports no JAX at module level (config files import `mesh_config` from it); the others do.
"""
