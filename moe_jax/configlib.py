"""Load an ml_collections config (`path.py[:arg]` or a packaged name) and apply `--config.a.b=value` overrides.

A spec names a config file and an optional argument for its `get_config(arg)`:
    configs/paper.py:d512_E8   a path (a user's own file, or the repository's configs/)
    paper:d512_E8, tiny, demo:dense, grids/smoke
                               a config shipped inside the package (`moe_jax.configs`)
A `configs/NAME.py` path that does not exist where the command runs falls back to the packaged
`NAME`, so the README's commands work from a non-editable install too.

Uses ml_collections' `config_flags` on a private `absl.flags.FlagValues`, so the argparse CLI and
absl never share global flag state. Every problem becomes a one-line `ConfigError`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from moe_jax.errors import ConfigError, UserError
from moe_jax.paths import require_local

_PREFIX = "--config."


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """`spec` = 'configs/paper.py:d512_E8' (the part after ':' goes to `get_config(arg)`);
    `overrides` = ['--config.model.experts=4', ...]."""
    spec = resolve_spec(spec)
    path = spec.split(":", 1)[0]
    bad = [o for o in overrides if not (o.startswith(_PREFIX) and "=" in o)]
    if bad:
        raise ConfigError(f"unrecognised override {bad[0]!r}; use --config.SECTION.FIELD=VALUE")
    argv = ["moe-jax", f"--config={spec}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
        config = values.config
    except UserError:
        raise
    except flags.Error as err:  # unknown field, bad type, errors in the config file
        raise ConfigError(_one_line(err)) from None
    except (AttributeError, KeyError) as err:  # usually an override naming a field that does not exist
        raise ConfigError(_unknown_field(spec, overrides) or f"cannot load config {spec!r}: {_one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 — a broken config file: name it, keep one line
        raise ConfigError(f"cannot load config {spec!r}: {type(err).__name__}: {_one_line(err)}") from None
    if config is None:
        raise ConfigError(f"config file {path!r} returned no config from get_config()")
    return config


def packaged_configs() -> list[str]:
    """Names of the configs shipped in the package: ['demo', 'grids/cpu', …, 'paper', 'tiny']."""
    root = Path(str(resources.files("moe_jax.configs")))
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.py")
                  if not p.name.startswith("_"))


def resolve_spec(spec: str) -> str:
    """'paper:d512_E8' → '/…/moe_jax/configs/paper.py:d512_E8'; a path spec is checked and returned as is.

    ConfigError (one line, listing the packaged names) when neither a file nor a packaged name matches.
    """
    require_local(spec, "config", "config files are Python read from this machine; copy it here first "
                  "(gcloud storage cp) and pass the local path")
    path, sep, arg = spec.partition(":")
    if os.path.isfile(path):
        if not path.endswith(".py"):
            raise ConfigError(f"config {spec!r} must be a Python file ending in .py, optionally with ':arg'")
        return spec
    name = path[: -len(".py")] if path.endswith(".py") else path
    if name.startswith("configs/"):  # the repository's configs/ named from elsewhere: the packaged copy
        name = name[len("configs/"):]
    packaged = packaged_configs()
    if name in packaged:
        return str(Path(str(resources.files("moe_jax.configs"))) / f"{name}.py") + sep + arg
    if path.endswith(".py") or "/" in path or os.sep in path:
        raise ConfigError(f"config file not found: {path!r}; give an existing .py file or a packaged name "
                          f"({', '.join(packaged)})")
    raise ConfigError(f"unknown config {path!r}; use a packaged name ({', '.join(packaged)}) or the path of a .py file")


def _unknown_field(spec: str, overrides) -> str | None:
    """Message naming the first override whose field is not in the config (None if all exist)."""
    try:
        config = load_config(spec, [])
    except ConfigError:
        return None
    for override in overrides:
        node, parts = config, override[len(_PREFIX):].split("=", 1)[0].split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:i]) or "the config"
                valid = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                return f"unknown config field {'.'.join(parts[: i + 1])!r} in {override!r}; fields of {where}: {valid}"
            node = node[part]
    return None


def _one_line(err: BaseException) -> str:
    """A user error's text on one line, with its cause if it has one."""
    cause = err.__cause__ or err.__context__
    text = str(err)
    if isinstance(cause, UserError):
        text = str(cause)
    return " ".join(text.split())
