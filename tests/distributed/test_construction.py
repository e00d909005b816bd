"""Construction without the whole model anywhere (models/construct.py): under TP=2 x ZeRO-3 on 4
gloo ranks (and TP=2 x ZeRO-2, ZeRO-3 over 4), the initial weights, gathered, equal one process's
bit for bit; each rank held only its piece (the bytes `parallel.shards.owned_bytes` counts: the
TP piece, divided over the gradient group under ZeRO-3; the worker checks that
`meta_owned_bytes`, what `bench memory --meta` counts on the meta device, is the same); and the model DeepSpeed's zero.Init
partitioned trains as one process does (the layout tests' three steps, float tolerance)."""

import json

import torch
from safetensors.torch import load_file

from megagoku.models.construct import build_initialised
from megagoku.parallel import ensure_single_process_groups
from megagoku.parallel.weights import full_weights
from megagoku.train.memory_plan import plan
from tests.distributed import scenario
from tests.distributed.construction_worker import SEED
from tests.distributed.launch import run_ranks

LAYOUTS = [dict(tensor_parallel=2, zero_stage=3), dict(tensor_parallel=2, zero_stage=2),
           dict(zero_stage=3)]


def test_initial_weights_equal_one_process_and_each_rank_holds_its_piece(tmp_path):
    run_ranks(4, ["tests/distributed/construction_worker.py",
                  json.dumps({"out": str(tmp_path), "runs": LAYOUTS})])
    ensure_single_process_groups()
    one = full_weights(build_initialised(scenario.model_config(), "cpu", SEED))
    assert any(float(v.abs().max()) > 0 for k, v in one.items() if k.startswith("blocks"))
    reference = {2: scenario.reference(2), 4: scenario.reference(4)}
    for i, layout in enumerate(LAYOUTS):
        result = load_file(tmp_path / f"run{i}.safetensors")
        for name, value in one.items():
            assert torch.equal(result[f"init/{name}"], value), (layout, name)
        tp = layout.get("tensor_parallel", 1)
        shards = 4 // tp
        # the plan's weights per rank; ZeRO-3 pads each tensor to a multiple of the shards
        expected = plan(scenario.model_config(), 4, tp, 1, layout["zero_stage"]).weights_bytes
        for rank in range(4):
            built = int((tmp_path / f"run{i}-rank{rank}.bytes").read_text())
            if layout["zero_stage"] == 3:
                assert expected <= built < expected + 4 * len(one), (layout, rank, built)
            else:
                assert built == expected, (layout, rank, built, expected)
        ref = reference[shards]
        torch.testing.assert_close(result["loss"], ref["loss"], atol=2e-5, rtol=1e-4)
        for key in (k for k in ref if k.startswith("weight/")):
            torch.testing.assert_close(result[key], ref[key], atol=2e-5, rtol=1e-4,
                                       msg=lambda m, key=key: f"{layout} {key}: {m}")
