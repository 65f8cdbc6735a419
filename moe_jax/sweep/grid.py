"""Sweep grids: a small config file of shapes × expert counts × token budgets, expanded into runs.

A grid file's `get_config()` returns a ConfigDict with
    base       train config every run starts from: a packaged name ('demo:moe', 'paper:d512_E1') or a .py path
    overrides  shared config overrides, nested by section: {'train': {'batch_size': 16}, 'data': {...}}
    shapes     {name: (d_model, n_layers, n_heads)}; head_dim = d_model / n_heads, SwiGLU hidden 3·d_model
    experts    expert counts E (1 = dense)
    budgets    token budgets T; each (shape, E) gets one constant-LR trunk and one cooldown branch per T
    max_tokens_per_param   drop budgets above this many tokens per non-embedding active parameter (0 = keep all)
    controls   ((shape, E, T), …): independent runs with their own full trapezoidal schedule
    control_seed           added to train.seed and data.seed of the controls (0 = the branches' seeds)

Runs (`RunSpec`): per (shape, E) a trunk that trains at constant LR to the last branch point and saves
a branch point at (1 − decay_fraction)·T for every T; a branch per T from that point, decaying to 0 at T;
and the controls. Each run is `moe-jax train --config BASE --workdir W --config.K=V …`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import ml_collections
from flax import traverse_util

from moe_jax.errors import ConfigError

KINDS = ("trunk", "branch", "control")
GRID_FIELDS = ("base", "overrides", "shapes", "experts", "budgets", "max_tokens_per_param", "controls", "control_seed")


@dataclass(frozen=True)
class Grid:
    name: str
    base: str
    overrides: dict  # flat 'section.field' -> value
    shapes: dict  # name -> (d_model, n_layers, n_heads)
    experts: tuple
    budgets: tuple
    max_tokens_per_param: float = 0.0
    controls: tuple = ()
    control_seed: int = 0


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep: what to train, where, and what must exist first."""

    id: str
    kind: str  # trunk | branch | control
    shape: str
    experts: int
    budget: int  # tokens seen when the run ends
    start_tokens: int  # tokens already seen when it starts (a branch's point; 0 otherwise)
    workdir: str
    base: str
    overrides: dict = field(default_factory=dict)  # flat 'section.field' -> value, on top of `base`
    n_act: int = 0  # active parameters incl. embeddings (for FLOPs = 6·N_act·tokens)
    deps: tuple = ()  # ((run id, branch-point tokens or 0 = the run must be done), …)

    def train_args(self) -> list[str]:
        """Arguments of `moe-jax train` for this run."""
        return ["--config", self.base, "--workdir", self.workdir,
                *(f"--config.{k}={format_value(v)}" for k, v in self.overrides.items())]


def format_value(value) -> str:
    """A config value as ml_collections' flag parser reads it back."""
    if isinstance(value, (tuple, list)):
        return "(" + "".join(f"{format_value(v)}, " for v in value) + ")"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _flat_overrides(node) -> dict:
    """{'train': {'batch_size': 16}} (ConfigDict or dict; None = none) → {'train.batch_size': 16}."""
    if node is None:
        return {}
    tree = node.to_dict() if isinstance(node, ml_collections.ConfigDict) else dict(node)
    return traverse_util.flatten_dict(tree, sep=".")


def builtin_grids() -> list[str]:
    from moe_jax.configlib import packaged_configs

    return [name.split("/", 1)[1] for name in packaged_configs() if name.startswith("grids/")]


def load_grid(spec: str) -> Grid:
    """A grid by built-in name ('smoke', 'cpu', 'paper') or the path of a .py file (optionally with ':arg')."""
    from moe_jax.configlib import load_config
    from moe_jax.paths import require_local

    require_local(spec, "grid", "grid files are Python read from this machine; copy it here first "
                  "(gcloud storage cp) and pass the local path")
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        if path not in builtin_grids():
            raise ConfigError(f"unknown grid {spec!r}; use a built-in grid ({', '.join(builtin_grids())}) "
                              f"or the path of a .py file")
        spec = f"grids/{spec}"
    raw = load_config(spec)
    missing = [f for f in ("base", "shapes", "experts", "budgets") if f not in raw]
    unknown = [f for f in raw.keys() if f not in GRID_FIELDS]
    if missing or unknown:
        problem = f"missing field {missing[0]!r}" if missing else f"unknown field {unknown[0]!r}"
        raise ConfigError(f"grid {spec!r}: {problem}; a grid has {', '.join(GRID_FIELDS)}")
    try:
        shapes = {name: _positive_ints(value, 3) for name, value in raw.shapes.items()}
        experts = _positive_ints(raw.experts)
        budgets = tuple(sorted(_positive_ints(raw.budgets)))
        controls = tuple((str(c[0]), *_positive_ints(c[1:], 2)) for c in raw.get("controls", ()))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"grid {spec!r}: shapes must map names to (d_model, n_layers, n_heads), experts and budgets "
                          f"be positive integers, controls be (shape, experts, budget) triples") from None
    return Grid(name=Path(path).stem if os.path.isfile(path) else path, base=raw.base,
                overrides=_flat_overrides(raw.get("overrides")), shapes=shapes, experts=experts, budgets=budgets,
                max_tokens_per_param=float(raw.get("max_tokens_per_param", 0.0)), controls=controls,
                control_seed=int(raw.get("control_seed", 0)))


def _positive_ints(values, length: int | None = None) -> tuple[int, ...]:
    """`values` as a tuple of positive integers (of `length` items); ValueError otherwise."""
    out = tuple(int(v) for v in values)
    if any(o != v or o < 1 for o, v in zip(out, values)) or (length is not None and len(out) != length):
        raise ValueError(values)
    return out


def shape_overrides(grid: Grid, shape: str, experts: int) -> dict:
    d_model, n_layers, n_heads = grid.shapes[shape]
    if d_model % n_heads:
        raise ConfigError(f"grid shape {shape!r}: d_model {d_model} is not divisible by n_heads {n_heads}")
    return {"model.d_model": d_model, "model.n_layers": n_layers, "model.n_heads": n_heads,
            "model.head_dim": d_model // n_heads, "model.ffn_hidden": 3 * d_model, "model.experts": experts}


def _config(grid: Grid, overrides: dict):
    from moe_jax.configlib import load_config

    return load_config(grid.base, [f"--config.{k}={format_value(v)}" for k, v in overrides.items()])


def _n_act(config) -> int:
    from moe_jax.model import count_params

    return int(count_params(config.model)["n_act"])


def group_budgets(grid: Grid, config) -> list[int]:
    """The grid's budgets that this (shape, E) trains: tokens / non-embedding active params ≤ the limit."""
    if not grid.max_tokens_per_param:
        return list(grid.budgets)
    from moe_jax.model import count_params

    counts = count_params(config.model)
    non_embedding = counts["n_act"] - counts["n_embedding"]
    return [b for b in grid.budgets if b / non_embedding <= grid.max_tokens_per_param]


def _trunk_overrides(budgets: list[int], decay_fraction: float) -> dict:
    last_point = (1 - decay_fraction) * max(budgets)
    return {"train.steps": 0, "train.schedule": "constant", "train.tokens": float(round(last_point)),
            "train.branch_budgets": tuple(float(b) for b in budgets), "train.init_from": ""}


def _group_runs(grid: Grid, shape: str, experts: int, runs_root: str) -> list[RunSpec]:
    """The trunk and branches of one (shape, E); ConfigError naming the grid when a budget is unusable."""
    from moe_jax.train.branching import branch_points
    from moe_jax.train.config import validate

    group = f"{shape}_E{experts}"
    shared = {**grid.overrides, **shape_overrides(grid, shape, experts)}
    probe = _config(grid, shared)
    budgets = group_budgets(grid, probe)
    if not budgets:
        return []
    trunk_over = {**shared, **_trunk_overrides(budgets, probe.train.decay_fraction)}
    trunk_config = _config(grid, trunk_over)
    try:
        validate(trunk_config, device_count=1)
        points = branch_points(trunk_config)
    except ConfigError as err:
        raise ConfigError(f"grid {grid.name!r}, {group}: {err}") from None
    trunk_id = f"{group}_trunk"
    trunk_dir = os.path.join(runs_root, trunk_id)
    n_act = _n_act(probe)
    runs = [RunSpec(trunk_id, "trunk", shape, experts, int(trunk_config.train.tokens), 0, trunk_dir, grid.base,
                    trunk_over, n_act)]
    for budget, point, _ in points:
        over = {**shared, "train.steps": 0, "train.schedule": "trapezoidal", "train.tokens": float(budget),
                "train.init_from": f"{trunk_dir}@{point}"}
        runs.append(RunSpec(f"{group}_T{budget}", "branch", shape, experts, budget, point,
                            os.path.join(runs_root, f"{group}_T{budget}"), grid.base, over, n_act, ((trunk_id, point),)))
    return runs


def _control_run(grid: Grid, shape: str, experts: int, budget: int, runs_root: str) -> RunSpec:
    if shape not in grid.shapes or experts not in grid.experts:
        raise ConfigError(f"grid {grid.name!r}: control ({shape!r}, {experts}, {budget}) names a shape or expert "
                          f"count the grid does not have (shapes {', '.join(grid.shapes)}; experts {grid.experts})")
    if budget not in grid.budgets:
        raise ConfigError(f"grid {grid.name!r}: control budget {budget} is not one of the grid's budgets "
                          f"{grid.budgets}; a control is compared with the branch of the same budget")
    over = {**grid.overrides, **shape_overrides(grid, shape, experts), "train.steps": 0,
            "train.schedule": "trapezoidal", "train.tokens": float(budget), "train.init_from": ""}
    probe = _config(grid, over)
    if grid.control_seed:
        over.update({"train.seed": probe.train.seed + grid.control_seed, "data.seed": probe.data.seed + grid.control_seed})
    run_id = f"{shape}_E{experts}_T{budget}_control"
    return RunSpec(run_id, "control", shape, experts, budget, 0, os.path.join(runs_root, run_id), grid.base, over,
                   _n_act(probe))


def expand(grid: Grid, runs_root: str) -> list[RunSpec]:
    """All runs of the grid (trunks, branches, controls), workdirs under `runs_root`."""
    if not grid.shapes or not grid.experts or not grid.budgets:
        raise ConfigError(f"grid {grid.name!r} needs at least one shape, expert count and budget")
    runs = []
    for shape in grid.shapes:
        for experts in grid.experts:
            runs.extend(_group_runs(grid, shape, experts, runs_root))
    runs.extend(_control_run(grid, s, e, t, runs_root) for s, e, t in grid.controls)
    return runs
