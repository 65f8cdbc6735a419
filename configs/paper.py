"""The paper's model shapes (SPEC §5), selected by name: `configs/paper.py:<shape>_E<experts>`.

Shapes: moe_jax.scaling.constants.PAPER_SHAPES (d512 … d2304, incl. d1280_L16 and d1408_L21 with head
dim 128); experts in {1, 2, 4, 8, 16, 32}. Example: `configs/paper.py:d1024_E32`. Default: d512_E1.

The vocabulary is GPT-2's BPE (V = 50257, counted in N_act, the LR rule and the law): training needs
--config.data.vocab_path=DIR holding encoder.json and vocab.bpe (nothing is downloaded). Without it the
run stops before writing anything, naming data.vocab_path (train.config.validate_vocab_size).
"""

import ml_collections

from moe_jax.errors import ConfigError
from moe_jax.data.config import data_config
from moe_jax.model.config import paper_shape
from moe_jax.parallel.mesh import mesh_config
from moe_jax.scaling import constants
from moe_jax.train.config import train_config


def parse_name(arg):
    """'d512_E8' -> ('d512', 8); ConfigError listing the valid names otherwise."""
    name = arg or "d512_E1"
    shape, _, experts = name.rpartition("_E")
    if shape not in constants.PAPER_SHAPES or not experts.isdigit() or int(experts) not in constants.PAPER_EXPERTS:
        raise ConfigError(
            f"unknown paper config {name!r}; use <shape>_E<experts> with shape in "
            f"{', '.join(constants.PAPER_SHAPES)} and experts in {', '.join(map(str, constants.PAPER_EXPERTS))}"
        )
    return shape, int(experts)


def get_config(arg=None):
    shape, experts = parse_name(arg)
    d_model, n_layers, n_heads = constants.PAPER_SHAPES[shape]
    config = ml_collections.ConfigDict()
    config.name = f"{shape}_E{experts}"  # the selected paper configuration
    config.model = paper_shape(d_model, experts, n_layers=n_layers, n_heads=n_heads)
    config.data = data_config(seq_len=512)  # context 512 (SPEC §5)
    config.data.task = "fineweb_edu"  # the paper's corpus: set --config.data.fineweb_path=<shards>
    # model.vocab_size = 50257 needs the GPT-2 BPE vocabulary: set --config.data.vocab_path=<dir with encoder.json,
    # vocab.bpe>; any other vocabulary is refused rather than leaving unused embedding rows in N_act.
    # SPEC §5 defaults of train_config(): AdamW 0.9/0.999/1e-8, wd 0.1, clip 0.1, LR from the rule, batch 512
    # with the 128/256 ramp-up to 0.5 B/1 B tokens, trapezoidal schedule (130 M warmup, last 20 % decay).
    config.train = train_config(
        tokens=8e9,  # token budget D; override per run (paper: 0.5 B … 128 B)
    )
    config.mesh = mesh_config()  # device mesh: data (-1 = all devices) × fsdp × expert × tensor; e.g. --config.mesh.expert=4
    return config
