"""One rank of a distributed test: start from the launcher's environment, build the grid from
the layout given as JSON, run the scenario, rank 0 writes the results (safetensors)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from megagoku.config import ParallelConfig  # noqa: E402
from megagoku.parallel import initialize_groups  # noqa: E402
from megagoku.parallel.distributed import init_distributed  # noqa: E402
from tests.distributed.launch import end_worker  # noqa: E402
from tests.distributed import scenario  # noqa: E402


def main() -> None:
    spec = json.loads(sys.argv[1])
    out_dir = Path(spec.pop("out"))
    init_distributed("gloo")
    torch.set_num_threads(1)
    runs = spec.pop("runs", [spec])
    for i, run_spec in enumerate(runs):
        block = run_spec.pop("block", "released")  # the model's block variant (scenario)
        initialize_groups(ParallelConfig(**run_spec))
        result = scenario.run(ParallelConfig(**run_spec), block=block)
        if torch.distributed.get_rank() == 0:
            save_file({k: v.contiguous() for k, v in result.items()}, out_dir / f"run{i}.safetensors")
    end_worker()


if __name__ == "__main__":
    main()
