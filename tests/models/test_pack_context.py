"""`per_token`: per-sample rows spread to their tokens, with a deterministic backward."""

import torch

from megagoku.models.pack_context import per_token


def test_per_token_matches_indexing_and_sums_gradients_per_sample():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, 6, generator=g, requires_grad=True)
    segment = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])  # sample 1 has no token here
    out = per_token(values, segment)
    assert torch.equal(out, values.detach()[segment])
    upstream = torch.randn(out.shape, generator=g)
    (grad,) = torch.autograd.grad(out, values, upstream)
    expected = torch.stack([upstream[segment == s].sum(0) for s in range(4)])
    torch.testing.assert_close(grad, expected)
    assert torch.equal(grad[1], torch.zeros(6))


def test_per_token_backward_is_bitwise_repeatable_on_long_packs():
    # Accumulating index_put_ (the backward of values[segment]) adds from several threads on the
    # CPU; this backward must give the same bits every time.
    g = torch.Generator().manual_seed(1)
    values = torch.randn(8, 256, generator=g, requires_grad=True)
    segment = torch.sort(torch.randint(0, 8, (50_000,), generator=g)).values
    upstream = torch.randn(50_000, 256, generator=g)
    first = torch.autograd.grad(per_token(values, segment), values, upstream)[0]
    for _ in range(5):
        assert torch.equal(torch.autograd.grad(per_token(values, segment), values, upstream)[0],
                           first)
