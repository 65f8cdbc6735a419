"""The `moe-jax` entry point: parse, call a library function, print. Logic lives in the libraries.

Each subcommand lives in a module exposing
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace, extra: list[str]) -> int
and is imported only when chosen, so `moe-jax law` never pays for importing JAX or TensorFlow.
`extra` holds the arguments argparse did not recognise (e.g. `--config.train.steps=10` overrides);
commands that take none must reject them via `reject_extra`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from moe_jax.errors import UserError

# name -> (module, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "law": ("moe_jax.scaling.cli_law", "predict the loss of one (N_act, tokens, experts) point"),
    "plan": ("moe_jax.scaling.cli_plan", "optimal (E, d_model, layers, tokens, LR) for a budget"),
    "fit": ("moe_jax.scaling.cli_fit", "fit a Chinchilla or joint MoE law to a CSV of runs"),
    "claims": ("moe_jax.scaling.cli_claims", "verdicts on the paper's headline claims from a sweep's runs, fit and reuse"),
    "model-info": ("moe_jax.model.cli_info", "parameter and FLOP counts of a config's model"),
    "data": ("moe_jax.data.cli", "prepare and inspect datasets and vocabularies"),
    "train": ("moe_jax.train.cli", "train a dense or MoE model from a config"),
    "demo": ("moe_jax.train.demo", "train dense and E=8 tiny models on the embedded corpus, compare losses"),
    "sweep": ("moe_jax.sweep.cli", "plan, run, watch and collect a scaling-law sweep with checkpoint reuse"),
    "reuse-report": ("moe_jax.sweep.cli_reuse", "tokens and time saved by checkpoint reuse; branch vs control loss"),
    "tpu": ("moe_jax.tpu.cli", "create, set up, run on and delete Cloud TPU slices (gcloud queued resources)"),
}

USES_TENSORFLOW = {"data", "train", "demo"}  # their data pipeline imports TensorFlow (seqio, tfds)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter hidden (CUDA probing, CPU-feature notes).

    Those lines are written to fd 2 by C++ before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot
    hide them; fd 2 points at /dev/null for the import only. Python errors of the import still raise.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401, PLC0415
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def reject_extra(extra: list[str]) -> None:
    """Raise a UserError naming unrecognised arguments."""
    if extra:
        raise UserError(f"unrecognised arguments: {' '.join(extra)}")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def attach_negative_numbers(argv: list[str]) -> list[str]:
    """['--flops', '-1e22'] → ['--flops=-1e22']: a negative number after an option is its value.

    argparse takes only '-1' or '-1.5' as numbers; '-1e22' or '-inf' would be read as an unknown flag.
    """
    out: list[str] = []
    for token in argv:
        prev = out[-1] if out else ""
        if token.startswith("-") and _is_number(token) and prev.startswith("--") and "=" not in prev:
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (plus a pointer to --help), exit code 2,
    and reads a negative number after an option as that option's value."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse API
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(attach_negative_numbers(args), namespace)

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _top_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="moe-jax",
        description="Joint MoE scaling laws: plan, train, sweep and fit Mixture-of-Experts LMs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<13} {h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"moe-jax: error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = _OneLineParser(prog=f"moe-jax {name}", description=help_text)
    module.add_arguments(parser)
    args, extra = parser.parse_known_args(rest)
    if name in USES_TENSORFLOW:
        import_tensorflow_quietly()
    try:
        return int(module.run(args, extra) or 0)
    except UserError as err:
        print(f"moe-jax {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moe-jax {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head` that closed early: not an error of ours, and no traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as err:  # a path that cannot be read or written: name it, no traceback
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"moe-jax {name}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
