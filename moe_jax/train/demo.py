"""`moe-jax demo`: the paper's compute claim in miniature on the embedded corpus.

Prepares the embedded public-domain corpus if needed, trains the pair `configs/demo.py:dense` and
`configs/demo.py:moe` (E = 8) with the same active parameters and the same tokens, then prints both
held-out losses (eval capacity factor 1.5) side by side with active/total parameters and tokens, and
draws every run's loss curves to WORKDIR/curves.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from moe_jax.errors import UserError
from moe_jax.paths import user_path
from moe_jax.scaling.counting import format_count
from moe_jax.train.metrics import read_metrics

DEMO_CONFIG = "demo"  # the packaged configs/demo.py


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="runs go to WORKDIR/dense_s<seed> and "
                        "WORKDIR/moe_e8_s<seed> (re-running resumes/reuses them; default %(default)s)")
    parser.add_argument("--seeds", type=int, default=2,
                        help="seeds per model (init and data order); the verdict is on the mean (default %(default)s)")
    parser.add_argument("--tokens", type=float, default=None,
                        help="training tokens per model (default: the config's, 10 M: ~2 min each on a 2-core CPU)")
    parser.add_argument("--experts", type=int, default=None, help="experts of the MoE model (default: the config's, 8)")
    parser.add_argument("--config", default=DEMO_CONFIG,
                        help="config (packaged name or .py path) with a ':dense' and a ':moe' variant (default: demo)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.epilog = "Extra --config.SECTION.FIELD=VALUE overrides apply to both runs (e.g. --config.data.data_dir=DIR)."


def _prepare_corpus(data_cfg) -> None:
    """Build the tfds dataset and token caches of the config's task if they are missing (offline)."""
    from moe_jax.data.cli import prepare

    print(f"preparing the {data_cfg.task} corpus (first run only) …", flush=True)
    prepare(data_cfg, None)


def _load_pair(config_file: str, tokens: float | None, experts: int | None, overrides: list[str]) -> list:
    """The config file's ':dense' and ':moe' configs with the demo's token budget and expert count applied."""
    from moe_jax.configlib import load_config

    moe_overrides = [f"--config.model.experts={experts}"] if experts is not None else []
    configs = [load_config(f"{config_file}:dense", overrides),
               load_config(f"{config_file}:moe", [*overrides, *moe_overrides])]
    if tokens is not None:  # a new budget keeps the config's warmup as a fraction of the run
        for t in (c.train for c in configs):
            share = t.warmup_tokens / t.tokens if t.tokens > 0 else 0.05  # a steps-budgeted config: 5 %
            t.warmup_tokens, t.tokens = max(share * tokens, 1.0), float(tokens)
    if configs[0].model.experts != 1 or configs[1].model.experts < 2:
        raise UserError(f"{config_file}: ':dense' must have model.experts = 1 and ':moe' at least 2, got "
                        f"{configs[0].model.experts} and {configs[1].model.experts}")
    return configs


def demo_runs(configs: list, workdir: str, seeds: int) -> list[tuple[str, int, object, Path]]:
    """(name, seed, config, run directory) of every run, in training order: the pair per seed."""
    runs = []
    for seed in range(seeds):
        for config in configs:
            config = config.copy_and_resolve_references()
            config.train.seed, config.data.seed = seed, seed
            e = config.model.experts
            name = "dense" if e == 1 else f"moe_e{e}"
            runs.append((name, seed, config, user_path(workdir) / f"{name}_s{seed}"))
    return runs


def check_runs(runs: list, workdir: str) -> None:
    """Every config and workdir check of every run, then WORKDIR created: before any corpus or training work."""
    import moe_jax.data as data_module
    from moe_jax.train import workdir as run_dir
    from moe_jax.train.preflight import preflight

    top = run_dir.check_usable(workdir)  # first: the error names --workdir itself
    for _, _, config, path in runs:
        checked, _ = preflight(config, data_module)  # the config as train() will record it
        run_dir.check_config_file(run_dir.check_usable(path), checked)
    run_dir.make_dir(top)


def run_demo(config_file: str, workdir: str, tokens: float | None, experts: int | None,
             overrides: list[str], seeds: int = 2) -> list[dict]:
    """Train the config file's ':dense' and ':moe' variants for seeds 0…seeds−1; return their summaries."""
    from moe_jax.train.cli import enable_compilation_cache
    from moe_jax.train.loop import train

    runs = demo_runs(_load_pair(config_file, tokens, experts, overrides), workdir, seeds)
    check_runs(runs, workdir)
    enable_compilation_cache()
    _prepare_corpus(runs[0][2].data)
    summaries = []
    for name, seed, config, path in runs:
        print(f"training {name} seed {seed}: E = {config.model.experts}, {format_count(config.train.tokens)} tokens "
              f"→ {path}", flush=True)
        summary = dict(train(config, path), name=name, seed=seed)
        last = read_metrics(path, "train")[-1]
        summary.update(router_entropy=last["router_entropy"], dropped_fraction=last["dropped_fraction"],
                       capacity_factor_train=float(config.model.capacity_factor_train), workdir=str(path))
        summaries.append(summary)
    return summaries


def plot_demo(summaries: list[dict], workdir: str) -> Path:
    """WORKDIR/curves.png: every run's training and held-out loss against tokens."""
    from moe_jax.train.curves import plot_run_curves

    runs = [(s["name"], s["seed"], s["workdir"]) for s in summaries]
    return plot_run_curves(runs, user_path(workdir) / "curves.png", title=verdict(summaries))


def paired_gaps(summaries: list[dict]) -> tuple[list[float], float]:
    """(MoE − dense held-out loss per seed, their mean); runs are paired by order (one pair per seed)."""
    dense = [s for s in summaries if s["experts"] == 1]
    moe = [s for s in summaries if s["experts"] > 1]
    gaps = [m["final_eval_loss"] - d["final_eval_loss"] for d, m in zip(dense, moe)]
    return gaps, sum(gaps) / len(gaps)


def verdict(summaries: list[dict]) -> str:
    """'MoE wins: E = 8 minus dense = -0.0543 nats/token on average over 2 seed(s)' (or 'dense wins: …')."""
    gaps, delta = paired_gaps(summaries)
    e = max(s["experts"] for s in summaries)
    return (f"{'MoE wins' if delta < 0 else 'dense wins'}: E = {e} minus dense = {delta:+.4f} nats/token on "
            f"average over {len(gaps)} seed(s)")


def format_table(summaries: list[dict]) -> str:
    """Per-run rows, the verdict on the mean over seeds (with each seed's paired gap) and the MoE router's state."""
    rows = [f"{'model':<8} {'seed':>4} {'E':>3} {'active':>8} {'total':>8} {'tokens':>8} {'tok/param':>9} "
            f"{'held-out loss':>14} {'minutes':>8}"]
    for s in summaries:
        rows.append(f"{s['name']:<8} {s.get('seed', 0):>4} {s['experts']:>3} {format_count(s['n_act']):>8} "
                    f"{format_count(s['n_total']):>8} {format_count(s['tokens']):>8} {s['tokens'] / s['n_act']:>9.1f} "
                    f"{s['final_eval_loss']:>14.4f} {s['wall_time_s'] / 60:>8.1f}")
    moe = [s for s in summaries if s["experts"] > 1]
    gaps, delta = paired_gaps(summaries)
    e = moe[0]["experts"]
    rows.append(f"{verdict(summaries)} (per seed: {', '.join(f'{g:+.4f}' for g in gaps)}) at equal active "
                "parameters and tokens")
    if len(gaps) > 1 and min(gaps) < 0 < max(gaps):
        rows.append("the seeds disagree: at this size the gap is within seed-to-seed noise; add --seeds or --tokens")
    elif len(gaps) > 1:
        rows.append(f"every seed agrees ({'MoE' if delta < 0 else 'dense'} ahead on all {len(gaps)})")
    entropy = sum(m["router_entropy"] for m in moe) / len(moe)
    dropped = sum(m["dropped_fraction"] for m in moe) / len(moe)
    rows.append(f"E = {e} router at the end: entropy {entropy:.3f} (uniform = {math.log(e):.3f}), "
                f"{100 * dropped:.0f} % of tokens over capacity at training CF {moe[0].get('capacity_factor_train', 1.0):g}")
    if delta >= 0 and entropy > 0.95 * math.log(e):
        rows.append("the router is still close to uniform, so each expert output is scaled by ~1/E and routing "
                    "barely depends on the token; README 'What the demo shows' has the measurements")
    return "\n".join(rows)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.tokens is not None and not args.tokens > 0:
        raise UserError(f"--tokens must be > 0, got {args.tokens:g}; e.g. --tokens 2e5")
    if args.experts is not None and args.experts < 2:
        raise UserError(f"--experts must be ≥ 2, got {args.experts}; e.g. --experts 8")
    if args.seeds < 1:
        raise UserError(f"--seeds must be ≥ 1, got {args.seeds}; e.g. --seeds 2")
    t0 = time.time()
    summaries = run_demo(args.config, args.workdir, args.tokens, args.experts, extra, seeds=args.seeds)
    curves = plot_demo(summaries, args.workdir)
    if args.json:
        print(json.dumps([{k: v for k, v in s.items() if k != "config"} for s in summaries]))
    else:
        print(format_table(summaries))
        print(f"total {(time.time() - t0) / 60:.1f} min; metrics and checkpoints in {args.workdir}; "
              f"loss curves in {curves}")
    return 0
