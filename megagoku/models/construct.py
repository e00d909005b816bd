"""The model as training builds it: never whole on any rank, with initial weights that do not
depend on the layout.

Each logical tensor's initial value comes from its own generator, seeded by the run's seed and
the tensor's name (`initial_value`), not from one stream drawn through the whole model in
construction order: a rank computes the whole value of one tensor, keeps its piece and drops the
rest, so a model started at TP=2 x ZeRO-3 on 4 ranks holds, gathered, the same bits as on one
process (tests/distributed/test_construction.py). The rule of each tensor is DiT's / Goku's
initialisation, stated once in `INITIAL_VALUES` (a parameter without a rule is an error, so a new
layer cannot silently start from garbage).

`build_initialised` builds on the meta device and materialises this rank's TP pieces
(`parallel.shards.materialize`); under ZeRO-3 DeepSpeed's `zero.Init` builds it instead, each
module partitioned as it is constructed, and the partitions are filled the same way. Neither path
draws from the global RNG, so the data and noise streams that follow are those of the seed alone.
"""

from __future__ import annotations

import fnmatch
import hashlib

import torch
from torch import nn

from megagoku.config.schema import ModelConfig
from megagoku.models.goku import GokuTransformer, build_model
from megagoku.parallel.shards import initialize_partitions, materialize, zero3_construction


def _zeros(t: torch.Tensor, g: torch.Generator) -> None:
    nn.init.zeros_(t)


def _ones(t: torch.Tensor, g: torch.Generator) -> None:
    nn.init.ones_(t)


def _xavier(t: torch.Tensor, g: torch.Generator) -> None:
    nn.init.xavier_uniform_(t, generator=g)


def _small_normal(t: torch.Tensor, g: torch.Generator) -> None:
    nn.init.normal_(t, std=0.02, generator=g)


# (name pattern, rule), the first match wins: DiT's initialisation (adaLN-Zero, zero output
# layer, xavier linears, N(0, 0.02) timestep MLP), norms' gains at one, biases at zero.
INITIAL_VALUES = (
    ("blocks.*.adaln.weight", _zeros),  # adaLN-Zero: every block starts as the identity
    ("final.*", _zeros),  # the velocity starts at zero
    ("cond_embed.weight", _zeros),  # I2V's added input starts without effect
    ("*.bias", _zeros),
    ("*norm*.weight", _ones),
    ("t_embedder.mlp.*.weight", _small_normal),
    ("patch_embed.weight", _xavier),
    ("blocks.*.attn.qkv.weight", _xavier),
    ("blocks.*.attn.proj.weight", _xavier),
    ("blocks.*.cross_attn.q.weight", _xavier),
    ("blocks.*.cross_attn.kv.weight", _xavier),
    ("blocks.*.cross_attn.proj.weight", _xavier),
    ("blocks.*.mlp.fc1.weight", _xavier),
    ("blocks.*.mlp.fc2.weight", _xavier),
)


def tensor_seed(seed: int, name: str) -> int:
    """The seed of one logical tensor's generator: the same on every rank and every layout."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def initial_value(name: str, shape: list[int], seed: int) -> torch.Tensor:
    """The whole float32 initial value of the logical tensor `name` of shape `shape`."""
    for pattern, rule in INITIAL_VALUES:
        if fnmatch.fnmatchcase(name, pattern):
            value = torch.empty(shape, dtype=torch.float32)
            rule(value, torch.Generator().manual_seed(tensor_seed(seed, name)))
            return value
    raise KeyError(f"{name}: no initialisation rule (models/construct.py INITIAL_VALUES)")


def build_initialised(cfg: ModelConfig, device: torch.device | str, seed: int,
                      zero3: bool = False) -> GokuTransformer:
    """The model on the process grid `parallel` holds, this rank's pieces only, initialised from
    `seed` (see the module doc). `zero3`: partitioned over the gradient group as DeepSpeed's
    ZeRO-3 engine expects it (build the engine with zero_stage 3 on it)."""
    device = torch.device(device)

    def initial(name: str, shape: list[int]) -> torch.Tensor:
        return initial_value(name, shape, seed).to(device)

    if zero3:
        # zero.Init allocates each module on this rank's device (torch's default init of the
        # plain layers then runs there: under fork_rng, so that it moves no training RNG).
        forked = [torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), zero3_construction():
            model = GokuTransformer(cfg, init_weights=False)
        return initialize_partitions(model, initial)
    return materialize(build_model(cfg, "meta"), device, initial)
