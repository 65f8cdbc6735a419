"""Small JSON tables of per-machine measurements in the user cache dir ($XDG_CACHE_HOME/moe_jax).

    table = read_table("matmul_peak.json")    # {} when the file is missing, unreadable or not JSON
    table[key] = value
    write_table("matmul_peak.json", table)    # atomic; an unwritable cache dir is ignored

Used for the matmul peak behind MFU (`train/mfu.py`) and the ragged_dot lowering verdicts
(`kernels/triton_choice.py`). A lost or unwritable table only costs a re-measurement.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moe_jax.paths import write_text_atomic


def cache_dir() -> Path:
    """The user cache dir for moe_jax ($XDG_CACHE_HOME/moe_jax or ~/.cache/moe_jax)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moe_jax"


def read_table(name: str) -> dict:
    """The JSON object stored as `name` in the cache dir, or {} if there is none (or it is damaged)."""
    try:
        table = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def write_table(name: str, table: dict) -> bool:
    """Store `table` as `name` (atomically: paths.write_text_atomic); False if the cache dir is unwritable."""
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(table, indent=1))
    except OSError:
        return False
    return True
