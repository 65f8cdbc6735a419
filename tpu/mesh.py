"""The device mesh a run asks for, and the check that it fills the slice exactly.

A mesh is {axis: size} over the axes of `config.mesh` (data, fsdp, expert, tensor); a size of -1 means
"the devices the other axes leave". It comes from the train config's `mesh` section when the config has
one, with the `--mesh fsdp=4,expert=4` flag's sizes on top; axes named nowhere are 1.
"""

from __future__ import annotations

import math
import re

from moe_jax.errors import UserError

AXES = ("data", "fsdp", "expert", "tensor")


def parse_mesh_flag(text: str) -> dict[str, int]:
    """'fsdp=4,expert=4' -> {'fsdp': 4, 'expert': 4}; UserError naming the bad part otherwise."""
    mesh = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        axis, sep, size = part.partition("=")
        if not sep or axis not in AXES or not re.fullmatch(r"-1|[1-9][0-9]*", size):
            raise UserError(f"bad --mesh part {part!r} in {text!r}; use AXIS=SIZE[,AXIS=SIZE…] with AXIS in "
                            f"{', '.join(AXES)} and SIZE a positive integer or -1 (the rest)")
        mesh[axis] = int(size)
    if not mesh:
        raise UserError(f"empty --mesh {text!r}; use e.g. --mesh fsdp=4,expert=4")
    return mesh


def mesh_from_config(config) -> dict[str, int]:
    """The sizes in `config.mesh` (empty when the config has no mesh section)."""
    section = config.get("mesh") if hasattr(config, "get") else None
    if section is None:
        return {}
    return {axis: int(section[axis]) for axis in AXES if axis in section}


def describe(mesh: dict[str, int]) -> str:
    """{'fsdp': 4, 'expert': 4} -> 'fsdp=4 x expert=4'."""
    return " x ".join(f"{axis}={size}" for axis, size in mesh.items()) or "(none)"


def check_mesh_fits(mesh: dict[str, int], chips: int, accelerator: str) -> None:
    """UserError unless the mesh uses exactly `chips` devices (one axis may be -1: the rest)."""
    fixed = math.prod(size for size in mesh.values() if size != -1)
    free = [axis for axis, size in mesh.items() if size == -1]
    if len(free) > 1:
        raise UserError(f"mesh {describe(mesh)} has -1 on {len(free)} axes; at most one axis can take the rest")
    if any(size < 1 and size != -1 for size in mesh.values()):
        raise UserError(f"mesh {describe(mesh)} has a size below 1; sizes are positive integers or -1 (the rest)")
    if free and chips % fixed == 0:
        return
    if not free and fixed == chips:
        return
    hint = f"the other axes must divide {chips}" if free else f"make the product {chips} or set one axis to -1"
    raise UserError(f"mesh {describe(mesh)} needs {fixed}{'·k' if free else ''} devices but {accelerator} has "
                    f"{chips} chips; {hint}")
