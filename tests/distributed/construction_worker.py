"""One rank of the construction test: build the scenario's model with `build_initialised` under
each layout given as JSON, gather its initial weights whole, then train the scenario's three steps
from its random weights (written into the shards with `write_whole`). Rank 0 writes the results;
every rank writes the bytes it owned after construction."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from megagoku.config import ParallelConfig  # noqa: E402
from megagoku.models import build_model  # noqa: E402
from megagoku.models.construct import build_initialised  # noqa: E402
from megagoku.optim import adamw  # noqa: E402
from megagoku.parallel import current_shard, data_parallel_rank, gradient_group  # noqa: E402
from megagoku.parallel import initialize_groups  # noqa: E402
from megagoku.parallel.distributed import init_distributed  # noqa: E402
from megagoku.parallel.engine import TrainEngine  # noqa: E402
from megagoku.parallel.shards import meta_owned_bytes, owned_bytes, write_whole  # noqa: E402
from megagoku.parallel.weights import full_weights  # noqa: E402
from megagoku.train.step import mean_over, pack_total  # noqa: E402
from tests.distributed.launch import end_worker  # noqa: E402
from tests.distributed import scenario  # noqa: E402

SEED = 11


def run(parallel: ParallelConfig) -> tuple[dict[str, torch.Tensor], int]:
    model = build_initialised(scenario.model_config(), "cpu", SEED,
                              zero3=parallel.zero_stage == 3)
    built = owned_bytes(model)
    # what `bench memory --meta` counts without allocating must be what was allocated
    counted = meta_owned_bytes(build_model(scenario.model_config(), "meta"),
                               zero3=parallel.zero_stage == 3)
    assert counted == built, (counted, built)
    out = {f"init/{k}": v for k, v in full_weights(model).items()}
    params = dict(model.named_parameters())
    for name, value in scenario.random_weights(model).items():
        write_whole(params[name], value)
    optimizer = adamw(model.parameters(), lr=1e-2, **scenario.ADAM)
    engine = TrainEngine(model, optimizer, parallel.zero_stage, grad_clip=0.5)
    shard = current_shard()
    for step in range(scenario.STEPS):
        loss, _ = scenario.replica_loss(model, step, data_parallel_rank(), shard)
        engine.backward(loss)
        if step == 0:
            out["loss"] = mean_over(pack_total(loss), gradient_group())
        engine.step()
    out.update({f"weight/{k}": v for k, v in full_weights(model).items()})
    return out, built


def main() -> None:
    spec = json.loads(sys.argv[1])
    out_dir = Path(spec["out"])
    init_distributed("gloo")
    torch.set_num_threads(1)
    rank = torch.distributed.get_rank()
    for i, run_spec in enumerate(spec["runs"]):
        initialize_groups(ParallelConfig(**run_spec))
        result, built = run(ParallelConfig(**run_spec))
        (out_dir / f"run{i}-rank{rank}.bytes").write_text(str(built))
        if rank == 0:
            save_file({k: v.contiguous() for k, v in result.items()},
                      out_dir / f"run{i}.safetensors")
    end_worker()


if __name__ == "__main__":
    main()
