"""`moe-jax train --config CONFIG --workdir DIR [--config.KEY=VALUE …]`: train or resume one run."""

from __future__ import annotations

import argparse
import json
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a packaged config (tiny, demo:moe, paper:d512_E8) or the path of your own .py[:arg]")
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, metrics.jsonl, tb/, summary.json; re-run to resume")
    parser.add_argument("--coordinator", default=None, help="multi-host: HOST:PORT of process 0 (with --num-processes, --process-id)")
    parser.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    parser.add_argument("--multi-host", action="store_true",
                        help="multi-host: call jax.distributed.initialize() and let JAX detect the cluster "
                             "(Cloud TPU VM metadata, GKE); `moe-jax tpu run` and TPU sweeps pass it")
    parser.epilog = ("Override any field with --config.SECTION.FIELD=VALUE, e.g. --config.train.steps=100 or "
                     "--config.mesh.data=2 --config.mesh.expert=4. On a multi-host Cloud TPU slice pass --multi-host "
                     "(started by itself when TPU_WORKER_HOSTNAMES lists several workers); elsewhere pass "
                     "--coordinator/--num-processes/--process-id.")


def enable_compilation_cache() -> None:
    """Persist compiled steps in the user cache dir, so a restarted (preempted) run skips recompiling."""
    import jax

    from moe_jax.user_cache import cache_dir

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax_compilation_cache"))


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from moe_jax.configlib import load_config
    from moe_jax.parallel.distributed import initialize
    from moe_jax.train.loop import EXIT_PREEMPTED, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", force=True)
    config = load_config(args.config, extra)
    initialize(args.coordinator, args.num_processes, args.process_id, multi_host=args.multi_host)
    enable_compilation_cache()
    summary = train(config, args.workdir)
    if summary["preempted"]:
        return EXIT_PREEMPTED
    import jax

    if jax.process_index() != 0:  # one summary line per run, from process 0
        return 0
    shown = {k: summary[k] for k in ("n_act", "n_total", "experts", "tokens", "flops", "final_eval_loss", "wall_time_s")}
    print(json.dumps(shown))
    return 0
