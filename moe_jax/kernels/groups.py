"""Which (group, row tile) pair each step of a grouped-matmul grid works on.

Rows [M] are split into G contiguous groups (group g = rows offsets[g]..offsets[g+1]) and into row
tiles of tm. A group touches the tiles from its first row's tile to its last row's tile; a tile
where one group ends and the next begins is visited once per group (consecutive steps, so the
output block stays in VMEM and each visit stores only its group's rows). Work items are listed
group by group; there are at most cdiv(M, tm) + G - 1 of them, which sizes the static grid.
Steps past the real count repeat the last work item's block indices (no extra HBM traffic) and
are skipped in the kernel with `pl.when`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


ACTIVE = 4  # position of `active` in WorkItems.scalars()


@dataclasses.dataclass(frozen=True)
class WorkItems:
    """Scalar-prefetch metadata of a grouped grid (all int32).

    group [W]: group of each work item (may be the tail group G, see `work_items`);
    weight_group [W]: the rhs/out group index, clamped to [0, G-1]; tile [W]: row tile;
    offsets [G+2]: row offsets of the groups and the tail; active [1]: number of real work items.
    """

    group: jax.Array
    weight_group: jax.Array
    tile: jax.Array
    offsets: jax.Array
    active: jax.Array

    def scalars(self) -> tuple:
        return (self.group, self.weight_group, self.tile, self.offsets, self.active)


def max_work_items(m: int, tm: int, groups: int) -> int:
    """Static grid length: every tile once, plus one revisit per boundary between groups."""
    return -(-m // tm) + groups  # groups real ones + the tail, minus one


def work_items(group_sizes, m: int, tm: int, *, visit_empty: bool) -> WorkItems:
    """Work items for group_sizes [G] int over m rows and row tiles of tm.

    Rows past sum(group_sizes) form a tail group G (weight group clamped to G-1) that a gmm fills
    with zeros, as `jax.lax.ragged_dot` does. visit_empty=True gives every empty group one work
    item (tgmm must write zeros for it); gmm skips them.
    """
    sizes = jnp.asarray(group_sizes, jnp.int32)
    g = sizes.shape[0]
    ends = jnp.cumsum(sizes)
    sizes = jnp.concatenate([sizes, jnp.maximum(m - ends[-1:], 0)])  # [G+1] with the tail
    offsets = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(sizes)]).astype(jnp.int32)  # [G+2]
    starts, ends = offsets[:-1], offsets[1:]
    first = jnp.minimum(starts // tm, -(-m // tm) - 1)  # an empty group at the very end -> last tile
    count = jnp.where(sizes > 0, (ends - 1) // tm - first + 1, 0)
    if visit_empty:
        count = count.at[:g].set(jnp.where(sizes[:g] == 0, 1, count[:g]))
        count = count.at[g].set(0)  # the tail adds nothing to the weight gradients
    w = max_work_items(m, tm, g)
    group = jnp.repeat(jnp.arange(g + 1, dtype=jnp.int32), count, total_repeat_length=w)  # [W]
    active = jnp.sum(count).astype(jnp.int32)
    item = jnp.minimum(jnp.arange(w, dtype=jnp.int32), jnp.maximum(active - 1, 0))  # inactive -> last real
    group = group[item]
    first_item = jnp.cumsum(count) - count  # [G+1] index of each group's first work item
    tile = (first[group] + item - first_item[group]).astype(jnp.int32)
    return WorkItems(group, jnp.minimum(group, g - 1), tile, offsets, active.reshape(1))
