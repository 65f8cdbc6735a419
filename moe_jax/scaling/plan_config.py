"""`moe-jax plan … --write-config PATH`: the recommended configuration as a runnable train config file.

The plan's shape is real-valued (L = d/h under the law's shape rule, the paper's h = 64); the file gets the
nearest integer shape of that rule (d_model a multiple of h, layers = heads = d/h, the rule's vocabulary),
its exact N_act, the LR rule for it, the
tokens that spend the plan's training FLOPs (6·N_act·D) at that shape, rounded down to a step of the
paper's batch ramp, and the law's loss for that shape and token count:

    moe-jax plan --flops 1e20 --write-config my_run.py
    moe-jax train --config my_run.py --workdir runs/my_run --config.data.fineweb_path=<shards>
"""

from __future__ import annotations

from pathlib import Path

from moe_jax.errors import UserError
from moe_jax.paths import user_path
from moe_jax.scaling import constants, counting
from moe_jax.scaling.law import load_law
from moe_jax.scaling.shape_rule import PAPER_RULE, ShapeRule

BYTE_VOCAB_SIZE = 259  # data.vocab_path = "bytes": seqio.ByteVocabulary, 3 special ids + 256 bytes

_TEMPLATE = '''"""Train config written by `moe-jax plan` ({source}).

Recommended: E={experts}, d_model {d_model}, {n_layers} layers x {n_heads} heads of {head_dim}, N_act {n_act:,} (incl.
embeddings), {tokens:,} tokens ({tokens_per_param:.1f} tokens/param), peak LR {lr:.4g} (the paper's rule);
predicted held-out loss {loss:.4f} for this integer shape (the plan's real-valued optimum: {plan_loss:.4f}).
The rest is the paper's recipe (SPEC §5): batch 512 x 512 with the 128/256 ramp, trapezoidal LR schedule.
{data_note}
    moe-jax train --config {path_name} --workdir runs/{stem}{run_flags}
"""

import ml_collections

from moe_jax.data.config import data_config
from moe_jax.model.config import model_config
from moe_jax.train.config import train_config


def get_config(arg=None):
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(  # the law's shape rule: layers = heads = d/{head_dim}, SwiGLU 3·d
        vocab_size={vocab}, d_model={d_model}, n_layers={n_layers}, n_heads={n_heads}, head_dim={head_dim},
        ffn_hidden={ffn_hidden}, experts={experts})
{data_lines}
    config.train = train_config(
        tokens={tokens}.0,  # the plan's training FLOPs at this shape, on a step of the batch ramp
        learning_rate={lr!r},  # LR(N_act, E) of SPEC §3 for this shape
    )
    return config
'''


def integer_shape(recommended: dict, shape: ShapeRule = PAPER_RULE) -> tuple[int, int]:
    """(d_model, layers) of the rule nearest the plan's: d a multiple of the head dim h (≥ h), layers = d/h."""
    head = shape.head_dim
    d_model = max(head, int(round(float(recommended["d_model"]) / head)) * head)
    return d_model, d_model // head


def config_values(plan: dict, recommended: dict) -> dict:
    """The numbers the config file is written from."""
    from moe_jax.train import schedules

    shape = ShapeRule.from_dict(plan.get("shape_rule", PAPER_RULE.to_dict()))
    d_model, n_layers = integer_shape(recommended, shape)
    experts = int(recommended["experts"])
    model = counting.ModelShape.paper(d_model, experts, shape.vocab, n_layers=n_layers, n_heads=n_layers)
    n_act = int(model.counts()["n_act"])
    ramp = dict(seq_len=512, final_batch=512, ramp_tokens=(0.5e9, 1.0e9), ramp_sizes=(128, 256))  # SPEC §5
    n_act_plan = float(counting.paper_n_act(float(recommended["d_model"]), float(recommended["n_layers"]), shape.vocab))
    same_flops = float(recommended["tokens"]) * n_act_plan / n_act  # 6·N_act·D of the plan at the integer shape
    tokens = schedules.boundary_at_or_below(same_flops, **ramp)[1] or 128 * 512
    law = load_law(plan["coeffs"])
    loss = float(law.loss(n_act, tokens, experts) if law.kind == "joint" else law.loss(n_act, tokens))
    return {"experts": experts, "d_model": d_model, "n_layers": n_layers, "n_heads": n_layers, "n_act": n_act,
            "head_dim": model.head_dim, "ffn_hidden": model.ffn_hidden, "vocab": shape.vocab,
            "tokens": int(tokens), "tokens_per_param": tokens / n_act, "lr": float(counting.lr_for(n_act, experts)),
            "loss": loss, "plan_loss": float(recommended["loss"])}


def data_section(vocab: int) -> dict[str, str]:
    """The config.data lines for a vocabulary size, a docstring note and the train command's extra flags.

    50257: the paper's corpus (FineWeb-Edu, GPT-2 BPE); 259: the packaged byte-level vocabulary; 8192 / 2048:
    a committed SentencePiece model; any other size has no packaged vocabulary (the note says so).
    """
    from moe_jax.data.config import BUILTIN_VOCAB_SIZES

    if vocab == constants.PAPER_VOCAB:
        return {"data_lines": '    config.data = data_config(seq_len=512)  # context 512 (SPEC §5)\n'
                              '    config.data.task = "fineweb_edu"  # the law\'s corpus: set data.fineweb_path '
                              '(and data.vocab_path to a GPT-2 BPE dir)',
                "data_note": "", "run_flags": " --config.data.fineweb_path=<FineWeb-Edu shards>"}
    if vocab == BYTE_VOCAB_SIZE:
        choice, note = 'vocab_path="bytes"', "the law's byte-level vocabulary (259 ids); set data.task to its corpus"
    elif vocab in BUILTIN_VOCAB_SIZES:
        choice, note = f"builtin_vocab_size={vocab}", f"committed SentencePiece vocabulary of {vocab}; set data.task"
    else:
        return {"data_lines": "    config.data = data_config(seq_len=512)  # set data.vocab_path: the law's vocabulary",
                "data_note": f"No packaged vocabulary has the law's {vocab} ids: set data.vocab_path (and data.task) "
                             f"to the tokenizer and corpus the law was fitted on.\n",
                "run_flags": " --config.data.vocab_path=<vocabulary>"}
    return {"data_lines": f"    # {note}\n    config.data = data_config(seq_len=512, {choice})", "data_note": "",
            "run_flags": ""}


def write_plan_config(plan: dict, recommended: dict, path) -> Path:
    """Write the recommended configuration of `plan` (build_plan's dict) as a train config .py at `path`
    (local or gs://)."""
    path = user_path(path)
    if path.suffix != ".py":
        raise UserError(f"--write-config {path} must name a .py file (a config with get_config())")
    values = config_values(plan, recommended)
    source = f"--flops {plan['flops']:.3g}, law {plan['coeffs']}"
    if "memory_optimal" in plan:
        source += f", memory {plan['memory_optimal']['memory_bytes'] / 1e9:.4g} GB"
    text = _TEMPLATE.format(source=source, path_name=path.name, stem=path.stem, **values,
                            **data_section(values["vocab"]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as err:
        raise UserError(f"cannot write --write-config {path}: {err.strerror}") from None
    return path
