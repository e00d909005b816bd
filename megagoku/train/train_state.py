"""What a checkpoint takes from a running job and puts back, whatever the layout it was saved or
is loaded under.

Taken (collective: every rank calls it with the same model, in the same order):
- the whole logical tensors of the weights, the EMA and AdamW's `exp_avg`/`exp_avg_sq`: TP pieces
  are concatenated (`gather_tp`), ZeRO partitions assembled through DeepSpeed's per-parameter
  fragment API (`parallel.optimizer_state`: ZeRO-1/2's flat partitions and ZeRO-3's partitioned
  parameters alike); each rank keeps only the tensors `assign_writers` gives it;
- small state, as JSON: the optimizer's step count and hyper-parameters, the LR scheduler, the EMA
  update count, and this rank's RNGs (torch CPU and CUDA, python, numpy, the replica generator).

Put back: the weights and EMA before DeepSpeed wraps the model, one logical tensor at a time
(each rank keeps its piece of the whole tensor, `parallel.shards.write_whole`: its TP piece, and
under ZeRO-3, where the model was built partitioned, its partition; DeepSpeed builds its ZeRO-1/2
fp32 master partitions from them), the optimizer moments after (`parallel.optimizer_state`: the
state is created as AdamW's first step would, then each rank writes its ZeRO fragment; a plain
torch optimizer gets its state dict entries), then the scheduler and the rate it gives the next
step. Since everything is stored whole, a checkpoint saved under any layout loads under any
other: the layouts the save x load matrix proves are README's table
(tests/train/test_resume_matrix.py).
"""

from __future__ import annotations

import base64
import logging
import random
from typing import Callable, Collection, Optional

import numpy as np
import torch
from torch import nn

from megagoku.parallel.engine import TrainEngine
from megagoku.parallel.optimizer_state import ADAM_MOMENTS, full_moment, set_full_moment
from megagoku.parallel.shards import write_whole
from megagoku.parallel.weights import (WeightsFit, gather_tp, gathered, tp_piece, whole_misfit,
                                      whole_shape)
from megagoku.train.checkpoint import CheckpointError, CheckpointReader, assign_writers
from megagoku.optim import EMA

log = logging.getLogger(__name__)

OPTIMIZER_MOMENTS = ADAM_MOMENTS


def logical_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of every tensor a checkpoint stores for `model` (weights, EMA, moments)."""
    params = dict(model.named_parameters())
    sizes = {}
    for name, tensor in model.weights().items():
        source = params.get(name, tensor)
        numel = int(np.prod(whole_shape(source)))
        sizes[f"model/{name}"] = sizes[f"ema/{name}"] = numel * source.element_size()
        if name in params:
            for moment in OPTIMIZER_MOMENTS:
                sizes[f"optim.{moment}/{name}"] = numel * 4  # AdamW keeps fp32 moments
    return sizes


def _moment(param: nn.Parameter, optimizer: torch.optim.Optimizer, moment: str) -> torch.Tensor:
    """This TP rank's whole (not ZeRO-partitioned) optimizer moment of `param` (collective over
    the gradient group under ZeRO)."""
    value = full_moment(param, optimizer, moment)
    if value is None:
        raise CheckpointError(f"no optimizer {moment} for a parameter of shape "
                              f"{whole_shape(param)}: save only after an optimizer step")
    return value.reshape(getattr(param, "ds_shape", param.shape))


def snapshot_tensors(model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
                     rank: int, world: int,
                     to_host: Callable[[str, torch.Tensor], torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """This rank's share of the logical tensors, each copied by `to_host(key, tensor)`
    (collective)."""
    owner = assign_writers(logical_sizes(model), world)
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}

    def keep(key: str, tensor: torch.Tensor) -> None:
        if owner[key] == rank:
            out[key] = to_host(key, tensor.contiguous())

    for name, tensor in model.weights().items():
        param = params.get(name)
        if param is None:  # a buffer: replicated, and the EMA model holds the same one
            keep(f"model/{name}", tensor)
            keep(f"ema/{name}", tensor)
            continue
        with gathered([param]):  # ZeRO-3: whole for the read; otherwise a no-op
            keep(f"model/{name}", gather_tp(param.detach(), param))
        keep(f"ema/{name}", ema.whole(name))  # gathered from the EMA's shards
        for moment in OPTIMIZER_MOMENTS:
            keep(f"optim.{moment}/{name}", gather_tp(_moment(param, optimizer, moment), param))
    return out


def _whole(reader: CheckpointReader, key: str, like: torch.Tensor) -> torch.Tensor:
    whole = reader.tensor(key)  # floating point and finite (or allowed): checked by the reader
    misfit = whole_misfit(whole, like)
    if misfit is not None:
        raise CheckpointError(f"{reader.path}: does not fit this model: {key} {misfit[1]} "
                              "(checkpoint vs model: a checkpoint of another model config?)")
    return whole


def _piece(reader: CheckpointReader, key: str, like: torch.Tensor) -> torch.Tensor:
    return tp_piece(_whole(reader, key, like), like)


def restore_weights(model: nn.Module, ema: EMA, reader: CheckpointReader,
                    fresh: Collection[str] = (), partial: bool = False,
                    hint: str = "a checkpoint of another model config?") -> None:
    """Weights and EMA from `reader`, one logical tensor at a time, each rank keeping only its
    piece (its TP piece; under ZeRO-3 its partition of it); before DeepSpeed wraps the model
    (its ZeRO-1/2 partitions are built from these). Names in `fresh` that the reader lacks
    keep their initial values (an I2V model's new input weights, from a T2V checkpoint).

    Strict both ways (`parallel.weights.WeightsFit`, the sample tool's check too): a tensor of
    the checkpoint that the model has no place for, a tensor of the model the checkpoint lacks,
    and a shape or dtype that differs are one CheckpointError naming them all (`hint` says what
    to do). `partial`: a deliberate partial load instead, which loads what fits, logs what is
    dropped and what keeps its initial value."""
    params = dict(model.named_parameters())
    stored = set(reader.keys("model"))
    fit = WeightsFit(model, stored, fresh)
    # Written as read, one tensor at a time: on a misfit the model is dropped.
    for name, tensor in model.weights().items():
        if name not in stored:
            if name in fresh:
                log.info("%s: %s is not in it: starts at its initial value (zero)",
                         reader.path, name)
            continue
        whole = reader.tensor(f"model/{name}")
        if not fit.check(name, whole):
            continue
        if name in params:
            write_whole(params[name], whole)
        else:  # a buffer: replicated
            with torch.no_grad():
                tensor.copy_(whole)
        del whole
    what = fit.problems()
    if what:
        if not partial:
            raise CheckpointError(f"{reader.path}: does not fit this model: {what} ({hint})")
        log.warning("%s: partial load (checkpoint.partial_weights): %s; dropped: the checkpoint's "
                    "tensors without a place, kept at their initial values: the model's others",
                    reader.path, what)
    skipped = fit.skipped | {n for n in fresh if n not in stored}
    for name in ema.shadow:
        if name in skipped:
            ema.reset(name)
        else:
            ema.load(name, _whole(reader, f"ema/{name}", params[name]))
    ema.updates = int(reader.state["ema_updates"])


def optimizer_step_count(optimizer: torch.optim.Optimizer) -> float:
    for state in optimizer.state.values():
        if "step" in state:
            return float(state["step"])
    return 0.0


def restore_optimizer(model: nn.Module, engine: TrainEngine, reader: CheckpointReader) -> None:
    """AdamW's moments and step count from `reader`, after DeepSpeed (when used) wrapped the
    optimizer: the state is created first (DeepSpeed's ZeRO partitions have none before the
    first step), then each rank writes its fragment of every moment. The hyper-parameters are
    `restore_optimizer_meta`'s (a resumed run's, not a new stage's)."""
    engine.create_optimizer_state(float(reader.state["optimizer"]["step"]))
    for name, param in model.named_parameters():
        for moment in OPTIMIZER_MOMENTS:
            set_full_moment(param, engine.optimizer, moment,
                            _piece(reader, f"optim.{moment}/{name}", param))


# How torch's AdamW computes, not what: this run's choice (`optim.adamw`), not the saved run's
# (a checkpoint of a foreach run resumes fused, the step count then on the parameters' device).
OPTIMIZER_IMPLEMENTATION_KEYS = ("foreach", "fused", "capturable", "differentiable")


def restore_optimizer_meta(optimizer: torch.optim.Optimizer,
                           scheduler: Optional[torch.optim.lr_scheduler.LRScheduler],
                           meta: dict, schedule: Optional[dict]) -> None:
    """What `optimizer_meta` saved (each param group's hyper-parameters) and the scheduler's
    state, with the rate the scheduler gives the next step put into the param groups (loading a
    scheduler's state does not touch them)."""
    for group, saved in zip(optimizer.param_groups, meta["groups"]):
        group.update({k: v for k, v in saved.items() if k not in OPTIMIZER_IMPLEMENTATION_KEYS})
    if scheduler is not None and schedule is not None:
        scheduler.load_state_dict(schedule)
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr


def optimizer_meta(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's JSON state: its step count and each group's hyper-parameters."""
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
               if k != "params" and isinstance(v, (int, float, bool, tuple, list, type(None)))}
              for g in optimizer.param_groups]
    return {"step": optimizer_step_count(optimizer), "groups": groups}


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _from_b64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state(generator: torch.Generator, replica: int, replicas: int) -> dict:
    """This rank's every RNG, as JSON, with the data-parallel replica it belongs to."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": _b64(torch.get_rng_state()), "generator": _b64(generator.get_state()),
             "python": [version, list(mt), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "replica": replica, "replicas": replicas}
    if torch.cuda.is_available():
        state["cuda"] = _b64(torch.cuda.get_rng_state().cpu())
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(_from_b64(state["torch"]))
    generator.set_state(_from_b64(state["generator"]))
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_from_b64(state["cuda"]))


def replica_rng(reader: CheckpointReader, replica: int, replicas: int) -> Optional[dict]:
    """The RNG state saved by a rank of this data-parallel replica, when the run had as many
    replicas (the ranks of one replica, TP and Ulysses, draw the same numbers, so a TP or Ulysses
    change keeps the random streams); None after a change of DP size, when every RNG continues
    from the seed instead and the run is no longer bit-exact."""
    for state in reader.state.get("rng", []):
        if state.get("replicas") == replicas and state.get("replica") == replica:
            return state
    return None
