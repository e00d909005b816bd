import torch
from torch import nn

from megagoku.optim import EMA


def test_ema_follows_the_closed_form():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    expected = torch.zeros(1, 2)
    for step, value in enumerate([1.0, 2.0, 4.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        torch.testing.assert_close(ema.shadow["weight"], expected)
    state = ema.state_dict({"weight": model.weight.detach(), "buffer": torch.ones(1)})
    torch.testing.assert_close(state["weight"], expected)
    assert torch.equal(state["buffer"], torch.ones(1))
