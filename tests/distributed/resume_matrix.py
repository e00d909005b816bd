"""The save x load matrix of checkpoint resumes: which layouts a checkpoint is saved under, which
it is resumed under, and what each cell promises. `tests/train/test_resume_matrix.py` runs it,
README.md shows it (`python -m tests.distributed.resume_matrix` prints the table;
`test_readme_table_is_the_matrix` keeps them the same).

Every run is `configs/tiny.yaml` (2 blocks) for STEPS steps with a checkpoint at RESUME_AT; a
resume continues that checkpoint to STEPS under the load layout. A cell promises:
- `bit-identical`: same layout, same processes: losses and final tensors equal to the bit;
- `equal`: same data-parallel count, another split: the same packs and random numbers, so the
  losses and final weights, EMA and moments equal the uninterrupted run's up to float summation
  order (TOLERANCE);
- `samples`: another data-parallel count: batches cannot be reproduced
  (`reshard_loader_states`): no sample before the old replicas' frontier is trained twice, none
  after it is skipped; every load layout of one data-parallel count gives the same losses.
"""

from __future__ import annotations

from pathlib import Path

# name -> (processes, parallel.* settings); data-parallel count = processes / (TP x Ulysses)
LAYOUTS: dict[str, tuple[int, dict]] = {
    "1 process": (1, {}),
    "TP=2": (2, {"tensor_parallel": 2}),
    "TP=2 + SP": (2, {"tensor_parallel": 2, "sequence_parallel": True}),
    "Ulysses=2": (2, {"ulysses": 2}),
    "ZeRO-1": (2, {"zero_stage": 1}),
    "ZeRO-2": (2, {"zero_stage": 2}),
    "ZeRO-3": (2, {"zero_stage": 3}),
}
# A new stage started from the ZeRO-2 checkpoint with its optimizer state
# (`checkpoint.init_optimizer`), under ZeRO-2 and under plain data parallelism (torch's own AdamW
# state, no ZeRO), with a learning rate of its own.
INIT_FROM = "ZeRO-2"
INITS = {"DP=2": (2, {}), "ZeRO-2": LAYOUTS["ZeRO-2"]}
INIT_LR = 5e-4
SAVES = list(LAYOUTS)
LOADS = list(LAYOUTS)
# The cells run in every CI run without `-m "not slow"` too: each save layout into ZeRO-2 and one
# process, and ZeRO-2 into everything (the rest of the matrix is marked slow).
FAST = {(s, l) for s in SAVES for l in LOADS if l in ("ZeRO-2", "1 process") or s == "ZeRO-2"}

STEPS = 4
RESUME_AT = 2
RUN = [f"train.steps={STEPS}", "train.log_every=1", "train.warmup_steps=2",
       "train.min_lr_ratio=0.1", "train.max_minutes=0", "data.tokens_per_step=512",
       "model.depth=2", "train.ema_decay=0.9", f"checkpoint.every={RESUME_AT}"]
# float32 summation order differs between layouts; the second moment is ~1e-6: relative.
TOLERANCE = dict(atol=5e-5, rtol=1e-3)
LOSS_TOLERANCE = dict(atol=1e-5, rtol=1e-4)


def processes(layout: str) -> int:
    return LAYOUTS[layout][0]


def data_parallel(layout: str) -> int:
    ranks, sets = LAYOUTS[layout]
    return ranks // (sets.get("tensor_parallel", 1) * sets.get("ulysses", 1))


def overrides(layout: str) -> list[str]:
    """The run's `--set` list under `layout` (of LAYOUTS or INITS)."""
    return RUN + [f"parallel.{k}={str(v).lower() if isinstance(v, bool) else v}"
                  for k, v in {**INITS, **LAYOUTS}[layout][1].items()]


def init_overrides(root: Path, layout: str) -> list[str]:
    return overrides(layout) + [f"checkpoint.init_from={checkpoint(root, INIT_FROM, RESUME_AT)}",
                                "checkpoint.init_optimizer=true", f"train.lr={INIT_LR}"]


def promise(save: str, load: str) -> str:
    if save == load:
        return "bit-identical"
    return "equal" if data_parallel(save) == data_parallel(load) else "samples"


def slug(layout: str) -> str:
    return layout.replace(" + ", "_").replace("=", "").replace(" ", "_").lower()


def run_dir(root: Path, save: str, load: str | None = None) -> Path:
    """Where the uninterrupted run under `save` goes, or its resume under `load`."""
    return root / "save" / slug(save) if load is None else \
        root / "resume" / f"{slug(save)}__{slug(load)}"


def init_dir(root: Path, layout: str) -> Path:
    return root / "init" / slug(layout)


def checkpoint(root: Path, save: str, step: int, load: str | None = None) -> Path:
    return run_dir(root, save, load) / "checkpoints" / f"step_{step:08d}"


def render_table() -> str:
    """README's table: rows the layout a checkpoint was saved under, columns the one it resumes
    under."""
    def label(layout: str) -> str:
        return f"{layout} (DP={data_parallel(layout)})"

    lines = ["| saved under \\ resumed under | " + " | ".join(map(label, LOADS)) + " |",
             "|---" * (len(LOADS) + 1) + "|"]
    for save in SAVES:
        lines.append(f"| {label(save)} | " + " | ".join(promise(save, load) for load in LOADS)
                     + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_table())
