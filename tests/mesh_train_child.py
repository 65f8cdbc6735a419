"""`train()` in a fresh process with N simulated CPU devices (and optionally as one of several processes).

    python tests/mesh_train_child.py '{"devices": 8, "mesh": {...}, "model": {...}, "train": {...},
                                       "workdir": "...", "distributed": ["localhost:1234", 2, 0]}'
Prints the summary as one JSON line. Used by tests/test_parallel.py.
"""

from __future__ import annotations

import json
import os
import sys

spec = json.loads(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['devices']}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moe_jax.parallel.distributed import initialize  # noqa: E402

if spec.get("distributed"):
    initialize(*spec["distributed"])

from moe_jax.parallel.mesh import mesh_config  # noqa: E402
from moe_jax.train.loop import EXIT_PREEMPTED, train  # noqa: E402
from test_train_helpers import FakeData, FakeIterator, tiny_config  # noqa: E402

FakeIterator.delay_s = float(spec.get("delay_s", 0.0))
config = tiny_config(**spec.get("train", {}))
config.model.update(spec.get("model", {}))
config.mesh = mesh_config(**spec.get("mesh", {}))
summary = train(config, spec["workdir"], data_module=FakeData)
print(json.dumps({k: summary[k] for k in ("steps", "tokens", "final_eval_loss", "preempted")}))
sys.exit(EXIT_PREEMPTED if summary["preempted"] else 0)
