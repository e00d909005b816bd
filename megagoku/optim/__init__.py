"""What a training step does to the weights once its loss is known, shared by every trainer of
the project (the Transformer's, the VAE's, the RF-vs-DDPM ablation's): the optimizer (torch's
AdamW, fused where it can be, `adamw.py`), the update (backward,
clipping and the optimizer step over any layout, `update.py`), the learning-rate schedule
(`schedule.py`) and the exponential moving average of the weights (`ema.py`)."""

from megagoku.optim.adamw import adamw
from megagoku.optim.ema import EMA
from megagoku.optim.schedule import lr_lambda, warmup_cosine
from megagoku.optim.update import Update

__all__ = ["EMA", "Update", "adamw", "lr_lambda", "warmup_cosine"]
