"""The update every trainer steps with is the plain torch step it replaced, bit for bit:
zero_grad, backward, clipping, AdamW, the LR schedule, the EMA."""

import copy

import torch
from torch import nn

from megagoku.config import LoopConfig
from megagoku.optim import EMA, Update, lr_lambda, warmup_cosine


def batches(n):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(n)]


def test_update_is_the_plain_step_bit_for_bit():
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 2))
    plain = copy.deepcopy(ours)
    schedule = warmup_cosine(2, 5, 0.1)
    ema = EMA(ours, 0.9)
    update = Update(ours, torch.optim.AdamW(ours.parameters(), lr=1e-2), 0.5, schedule, ema,
                    use_deepspeed=False)
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    plain_ema = {n: p.detach().clone() for n, p in plain.named_parameters()}
    for step, (x, y) in enumerate(batches(5)):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * schedule(step)
        assert update.lr == optimizer.param_groups[0]["lr"]
        norm = update((ours(x) - y).pow(2).mean())
        optimizer.zero_grad(set_to_none=True)
        (plain(x) - y).pow(2).mean().backward()
        assert norm == float(torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5))
        optimizer.step()
        decay = min(0.9, (2 + step) / (11 + step))
        for n, p in plain.named_parameters():
            plain_ema[n].lerp_(p.detach(), 1 - decay)
    for (n, p), q in zip(ours.named_parameters(), plain.parameters()):
        assert torch.equal(p, q) and torch.equal(ema.shadow[n], plain_ema[n]), n


def test_accumulated_backwards_add_up_and_a_non_finite_norm_skips_the_update():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    update = Update(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.0,
                    use_deepspeed=False)
    (x1, y1), (x2, y2) = batches(2)
    update.backward((model(x1) - y1).pow(2).sum())
    update.backward((model(x2) - y2).pow(2).sum(), accumulate=True)
    accumulated = model.weight.grad.clone()
    update.backward((model(x2) - y2).pow(2).sum())  # a new step: the gradients start afresh
    model.weight.grad += torch.autograd.grad((model(x1) - y1).pow(2).sum(), model.weight)[0]
    torch.testing.assert_close(accumulated, model.weight.grad)
    before = model.weight.detach().clone()
    update.backward(model(x1).sum() * float("nan"))
    norm = update.step()
    assert norm != norm and torch.equal(model.weight, before)  # a NaN norm: no update


def test_the_train_sections_schedule_is_warmup_then_cosine():
    cfg = LoopConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert [lr_lambda(cfg, s) for s in (0, 1)] == [0.5, 1.0]
    assert abs(lr_lambda(cfg, 10) - 0.1) < 1e-12 and lr_lambda(cfg, 6) < lr_lambda(cfg, 3)
    assert all(warmup_cosine(0, 10)(s) == 1.0 for s in range(12))  # min_ratio 1: constant
