"""One rank of tests/train/test_samples_layouts.py: in one process group, train each asked-for run
(`configs/tiny.yaml` with its overrides) as a launched run would, the sampler keeping a copy of
the weights it generates with (`<weights>/rank<R>_step_<N>.safetensors`, written by the rank
that generates), and the evaluator likewise (`<weights>/eval_rank<R>_step_<N>.safetensors`).

argv[1]: JSON {"weights": DIR, "runs": [{"dir": RUN_DIR, "sets": [KEY=VALUE, ...]}, ...]}."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from megagoku.config import load_training_config  # noqa: E402
from megagoku.evaluation.periodic import PeriodicEvaluator  # noqa: E402
from megagoku.parallel import collectives  # noqa: E402
from megagoku.parallel.distributed import init_distributed  # noqa: E402
from megagoku.train.samples import PeriodicSampler  # noqa: E402
from tests.distributed.launch import ROOT, end_worker  # noqa: E402
from tests.distributed.resume_worker import train_as_launched  # noqa: E402


GENERATE = {PeriodicSampler: PeriodicSampler.run, PeriodicEvaluator: PeriodicEvaluator.run}
PREFIX = {PeriodicSampler: "", PeriodicEvaluator: "eval_"}


def keep_the_weights_generated_with(folder: Path) -> None:
    """Each sample and evaluation first writes the weights of the copy it generates with (into
    `folder`)."""
    for cls, generate in GENERATE.items():
        def run(self, step, generator, generate=generate, prefix=PREFIX[cls]):
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in generator.model.weights().items()},
                      folder / f"{prefix}rank{collectives.rank()}_step_{step:08d}.safetensors")
            return generate(self, step, generator)

        cls.run = run


def main() -> None:
    spec = json.loads(sys.argv[1])
    init_distributed("gloo")
    torch.set_num_threads(1)
    for run in spec["runs"]:
        run_dir = Path(run["dir"])
        keep_the_weights_generated_with(Path(spec["weights"]) / run_dir.name)
        train_as_launched(load_training_config(ROOT / "configs/tiny.yaml", run["sets"]), run_dir)
    end_worker()


if __name__ == "__main__":
    main()
