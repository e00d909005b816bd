"""The float32 adaLN references (the released block's arithmetic), and `per_token`: per-sample
rows spread to their tokens, with a deterministic backward."""

import torch
import torch.nn.functional as F

from megagoku.ops import gated_residual_reference, modulated_norm_reference
from megagoku.ops.modulate import per_token


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


def test_reference_is_the_released_arithmetic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 12, dtype=torch.float64, generator=g)
    shift, scale = torch.randn(2, 12, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    segment = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    w = torch.randn(12, dtype=torch.float64)
    layer = F.layer_norm(x, (12,), eps=1e-6) * (1 + scale[segment]) + shift[segment]
    torch.testing.assert_close(
        modulated_norm_reference(x, "layer", None, 1e-6, shift, scale, segment), layer)
    rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(
        modulated_norm_reference(x, "rms", w, 1e-6, shift, scale, segment),
        rms * (1 + scale[segment]) + shift[segment])
    gate, out = torch.randn(2, 12, dtype=torch.float64), torch.randn(7, 12, dtype=torch.float64)
    torch.testing.assert_close(gated_residual_reference(x, gate, out, segment),
                               x + gate[segment] * out)
    # bfloat16: the RMSNorm's output is rounded to bf16 before the float32 modulation, the
    # LayerNorm's is not; the result is bf16.
    xb = x.to(torch.bfloat16)
    got = modulated_norm_reference(xb, "rms", w.float(), 1e-6, shift.float(), scale.float(),
                                   segment)
    h = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6) * w.float())
    expected = (h.to(torch.bfloat16).float() * (1 + scale.float()[segment])
                + shift.float()[segment]).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
