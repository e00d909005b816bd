"""The pieces a training run is built from (`train/trainer.py` builds them and runs the loop),
in the manner of torchtitan's trainer: each owns one concern and its part of the checkpoint.

| component | owns | in state.json |
|---|---|---|
| `model.TrainedModel` | the model and its EMA: construction, starting weights, activation checkpointing | `ema_updates` |
| `optimizer.Optimization` | AdamW, the LR schedule and the update over the layout (`optim.Update`) | `scheduler`, `optimizer` |
| `data.TrainData` | this replica's packs, their caption features and I2V frames | `loader` (every replica's) |
| `rng.RandomStreams` | the seed and this rank's random streams | `rng` (per rank, in its part) |
| `train.anomaly.AnomalyPolicy` | loss anomalies and the response to them | `anomaly` |
| `stop.StopConditions` | stop signals (Ctrl-C too), the time limit and failing writes, agreed by every rank | - |
| `launcher.LauncherLink` | progress beats and events for `megagoku launch` | - |
| `metrics.TrainMetrics` (`train/metrics.py`) | the log window, metrics.jsonl, TensorBoard, progress | - |
| `checkpointing.CheckpointSaver` | when a save blocks training and what it takes | - |

A checkpoint's JSON state (state.json) is the union of the components' `state_dict()`s; on
resume each takes its own entries back with `load_state_dict(state)`. The tensors (`model/`,
`ema/`, `optim.*/`) are taken in one collective snapshot (`train_state.snapshot_tensors`), because
which rank writes which tensor is balanced over all of them together; the model's weights and EMA
are put back when the model is built (DeepSpeed builds its partitions from them), the optimizer's
moments once the engine exists.
"""

from typing import Protocol


class Stateful(Protocol):
    """A component's part of a checkpoint's state.json."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
