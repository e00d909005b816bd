"""The training scenario every parallel layout must reproduce: a small Goku model, packs of
uneven length (51 tokens: divisible by neither 2 nor 4), three AdamW steps with clipping.

`run(layout)` runs it in whatever process grid is initialised; `reference(dp)` runs the same
model and batch in one process, data-parallel packs summed into one mean loss.
"""

from __future__ import annotations

import torch

from megagoku.config import FlowConfig, ModelConfig, ParallelConfig
from megagoku.config.schema import LEGACY_BLOCK
from megagoku.data.packing import pack
from megagoku.models import build_model
from megagoku.optim import adamw
from megagoku.parallel import (activation_checkpoint, current_shard, data_parallel_rank,
                               gradient_group)
from megagoku.parallel.engine import TrainEngine
from megagoku.parallel.weights import full_weights, gather_tp, load_full_weights
from megagoku.train.step import mean_over, pack_total, step_loss

GRIDS = [(2, 3, 4), (1, 5, 3), (3, 2, 2)]  # 24 + 15 + 12 = 51 tokens
TEXT_LENS = [3, 5, 2]
STEPS = 3
# Adam divides by sqrt(v) + eps: for a gradient element near 1e-8 the default eps turns float
# rounding differences into full-size update differences. 1e-6 keeps the comparison meaningful.
ADAM = dict(weight_decay=0.01, eps=1e-6)
FLOW = FlowConfig(time_shift=1.0)


def model_config(block: str = "released") -> ModelConfig:
    """Goku's released block (the default), or "legacy", the earlier megagoku block."""
    variant = LEGACY_BLOCK if block == "legacy" else {}
    return ModelConfig(name="dist", depth=2, hidden_size=64, num_heads=4, mlp_ratio=2.0,
                       in_channels=2, patch_size=(1, 1, 1), text_dim=16, rope_split=(4, 6, 6),
                       attention_backend="auto", **variant)


def make_pack(step: int, replica: int):
    g = torch.Generator().manual_seed(100 * step + replica)
    latents = [torch.randn(2, *grid, generator=g) for grid in GRIDS]
    batch = pack(latents, ["a", "b", "c"], ["video", "image", "video"], (1, 1, 1))
    text = torch.randn(sum(TEXT_LENS), 16, generator=g)
    text_cu = torch.tensor([0] + TEXT_LENS).cumsum(0).to(torch.int32)
    return batch, text, text_cu


def random_weights(model) -> dict[str, torch.Tensor]:
    """Random whole weights (adaLN-Zero's zeros would leave most gradients zero)."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for name, w in sorted(full_weights(model).items()):
        scale = w.shape[-1] ** -0.5 if w.dim() >= 2 else 0.1
        out[name] = torch.randn(w.shape, generator=g) * scale + (1.0 if w.dim() == 1 else 0.0)
    return out


def build(checkpointing: str = "none", every: int = 1, block: str = "released"):
    torch.manual_seed(0)
    model = build_model(model_config(block))
    initial = full_weights(model)
    load_full_weights(model, random_weights(model))
    activation_checkpoint.apply_activation_checkpointing(model.blocks, checkpointing, every)
    return model, initial


def replica_loss(model, step: int, replica: int, shard):
    """This rank's loss share (and per-sample errors) on replica `replica`'s pack of `step`."""
    batch, text, text_cu = make_pack(step, replica)
    g = torch.Generator().manual_seed(1000 * step + replica)
    loss, per_sample, _ = step_loss(model, batch, text, text_cu, FLOW, g, shard)
    return loss, per_sample


def full_grads(model, engine) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if engine.deepspeed is not None:
            from deepspeed.utils import safe_get_full_grad
            grad = safe_get_full_grad(p)
        else:
            grad = p.grad
        out[name] = gather_tp(grad.detach().clone(), p)
    return out


def measured_bytes(model, optimizer, zero_stage: int) -> dict[str, int]:
    """What this rank holds: its weights, and its optimizer state (AdamW moments, plus the
    fp32 master partition DeepSpeed keeps under ZeRO 1-3: the tensors the optimizer updates,
    when they are not the weights' own storage)."""
    held = [p.ds_tensor if hasattr(p, "ds_tensor") else p for p in model.parameters()]
    weights = sum(t.numel() for t in held) * 4
    moments = sum(t.numel() * t.element_size() for st in optimizer.state.values()
                  for k, t in st.items() if k != "step")
    own = {t.untyped_storage().data_ptr() for t in held}
    zero3 = next((p._z3_optimizer for p in model.parameters() if hasattr(p, "_z3_optimizer")),
                 None)  # it puts its fp32 partitions into the param groups only to step
    stepped = list(zero3.fp32_partitioned_groups_flat) if zero3 is not None else \
        [p for g in optimizer.param_groups for p in g["params"]]
    master = sum(p.numel() * p.element_size() for p in stepped
                 if p.untyped_storage().data_ptr() not in own)
    assert (master > 0) == (zero_stage > 0), (zero_stage, master)
    return {"weights_bytes": weights, "optimizer_bytes": moments + master}


def run(parallel: ParallelConfig, lr: float = 1e-2, block: str = "released"
        ) -> dict[str, torch.Tensor]:
    """Loss and gradients of step 1, weights after STEPS steps, whole, on every rank; and the
    bytes this rank held (`bytes/...`)."""
    model, initial = build(parallel.activation_checkpointing, parallel.activation_checkpoint_every,
                           block)
    optimizer = adamw(model.parameters(), lr=lr, **ADAM)
    engine = TrainEngine(model, optimizer, parallel.zero_stage, grad_clip=0.5)
    shard = current_shard()
    out = {f"init/{k}": v for k, v in initial.items()}
    for step in range(STEPS):
        loss, per_sample = replica_loss(model, step, data_parallel_rank(), shard)
        engine.backward(loss)
        if step == 0:
            out["loss"] = mean_over(pack_total(loss), gradient_group())
            out["per_sample"] = mean_over(pack_total(per_sample), gradient_group())
            out.update({f"grad/{k}": v for k, v in full_grads(model, engine).items()})
        engine.step()
    out.update({f"bytes/{k}": torch.tensor(v) for k, v in
                measured_bytes(model, optimizer, parallel.zero_stage).items()})
    out.update({f"weight/{k}": v for k, v in full_weights(model).items()})
    return out


def reference(data_parallel: int = 1, lr: float = 1e-2, block: str = "released"
              ) -> dict[str, torch.Tensor]:
    """The same three steps in one process; `data_parallel` replicas' packs averaged."""
    model, initial = build(block=block)
    optimizer = adamw(model.parameters(), lr=lr, **ADAM)
    engine = TrainEngine(model, optimizer, 0, grad_clip=0.5, use_deepspeed=False)
    shard = current_shard()
    out = {f"init/{k}": v for k, v in initial.items()}
    for step in range(STEPS):
        losses, errors = [], []
        for replica in range(data_parallel):
            loss, per_sample = replica_loss(model, step, replica, shard)
            losses.append(loss)
            errors.append(per_sample)
        loss = torch.stack(losses).mean()
        engine.backward(loss)
        if step == 0:
            out["loss"] = loss.detach()
            out["per_sample"] = torch.stack(errors).mean(0)
            out.update({f"grad/{k}": p.grad.detach().clone()
                        for k, p in model.named_parameters()})
        engine.step()
    out.update({f"weight/{k}": v for k, v in full_weights(model).items()})
    return out
