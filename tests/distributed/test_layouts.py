"""Every parallel layout equals one process: the loss and per-parameter gradients of step 1 and
the weights after three AdamW steps (with clipping), gathered whole, within float32 tolerance.
The model has Goku's released block (whole-width Q/K norm: under TP its sums of squares are
added over the group, its gain split with the heads); the `_legacy_block` layouts keep the
earlier megagoku block (per-head Q/K norm, gain replicated over TP) under test.

Each test starts real gloo processes (tests/distributed/worker.py) the way torchrun does.
"""

import json
from functools import cache

import pytest
import torch
from safetensors.torch import load_file

from megagoku.train.memory_plan import plan
from tests.distributed import scenario
from tests.distributed.launch import run_ranks

LAYOUTS = {
    "tp2": (2, [dict(tensor_parallel=2)]),
    "ulysses2_uneven": (2, [dict(ulysses=2)]),
    "tp2_megatron_sp": (2, [dict(tensor_parallel=2, sequence_parallel=True,
                                 activation_checkpointing="attention")]),
    "dp2_zero123": (2, [dict(zero_stage=1), dict(zero_stage=2), dict(zero_stage=3)]),
    "tp2_x_ulysses2": (4, [dict(tensor_parallel=2, ulysses=2, sequence_parallel=True,
                                activation_checkpointing="full")]),
    "tp2_x_dp2_zero2": (4, [dict(tensor_parallel=2, zero_stage=2)]),
    "tp2_legacy_block": (2, [dict(tensor_parallel=2, block="legacy")]),
    "tp2_megatron_sp_legacy_block": (2, [dict(tensor_parallel=2, sequence_parallel=True,
                                              block="legacy")]),
}


@cache
def reference(data_parallel: int, block: str = "released") -> dict[str, torch.Tensor]:
    return scenario.reference(data_parallel, block=block)


def compare(result: dict, ref: dict) -> None:
    assert result.keys() == ref.keys() | {"bytes/weights_bytes", "bytes/optimizer_bytes"}
    for key in sorted(ref):
        torch.testing.assert_close(result[key], ref[key], atol=2e-5, rtol=1e-4,
                                   msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_equals_one_process(name, tmp_path):
    ranks, runs = LAYOUTS[name]
    run_ranks(ranks, ["tests/distributed/worker.py", json.dumps({"out": str(tmp_path), "runs": runs})])
    tp = runs[0].get("tensor_parallel", 1)
    data_parallel = ranks // (tp * runs[0].get("ulysses", 1))
    block = runs[0].get("block", "released")
    ref = reference(data_parallel, block)
    assert any(float(v.abs().max()) > 0 for k, v in ref.items() if k.startswith("grad/blocks"))
    for i, run in enumerate(runs):
        result = load_file(tmp_path / f"run{i}.safetensors")
        compare(result, ref)
        # `megagoku info --plan` predicts what rank 0 held (ZeRO pads partitions a little).
        expected = plan(scenario.model_config(block), ranks, tp, run.get("ulysses", 1),
                        run.get("zero_stage", 0))
        for key in ("weights_bytes", "optimizer_bytes"):
            measured = int(result[f"bytes/{key}"])
            assert abs(measured - getattr(expected, key)) <= 0.02 * measured, (key, measured,
                                                                               expected)
