"""`moe-jax claims --dir D`: verdicts on the paper's headline claims from D/runs.csv, D/fit.json, D/reuse.json.

Prints markdown (the fit next to the paper's, a verdict per SPEC §6 claim, the evidence tables); `--update
FILE.md` writes the same text between FILE's `<!-- claims:begin -->` and `<!-- claims:end -->` markers.
"""

from __future__ import annotations

import argparse
import json

from moe_jax.errors import UserError
from moe_jax.paths import user_path

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, help="directory with runs.csv, fit.json and (optional) reuse.json")
    parser.add_argument("--json", action="store_true", help="print the verdicts' numbers as JSON")
    parser.add_argument("--update", metavar="FILE.md", help=f"replace the text between {BEGIN} and {END} in FILE.md")


def replace_block(text: str, block: str, source: str) -> str:
    """`text` with the part between the claims markers replaced by `block`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise UserError(f"{source}: needs the markers {BEGIN} and {END} (in that order) around the generated block")
    return text[: start + len(BEGIN)] + "\n" + block + text[end:]


def generated_block(text: str) -> str:
    """The text between the claims markers (what `--update` wrote)."""
    start, end = text.find(BEGIN), text.find(END)
    return text[start + len(BEGIN) + 1: end] if 0 <= start < end else ""


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from moe_jax.cli import reject_extra
    from moe_jax.scaling.claims import evaluate, load_evidence, to_markdown

    reject_extra(extra)
    evidence = load_evidence(args.dir)
    verdicts = evaluate(evidence)
    if args.json:
        print(json.dumps([{"key": v.key, "claim": v.claim, "holds": v.holds, "summary": v.summary,
                           "numbers": v.numbers} for v in verdicts], indent=1, default=str))
        return 0
    block = to_markdown(evidence, verdicts)
    if args.update:
        path = user_path(args.update)  # local or gs://
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
        path.write_text(replace_block(text, block, str(path)))
        print(f"updated {path}")
    else:
        print(block, end="")
    return 0
