"""The packed attention backends compute the same block-diagonal attention: each sample's
queries see only that sample's keys, forward and backward; `auto` on a CPU takes the per-sample
slices (`sdpa_segments`)."""

import pytest
import torch
import torch.nn.functional as F

from megagoku.models.attention import SeqLayout, resolve_backend, varlen_attention

CPU_BACKENDS = ["sdpa_segments", "sdpa_padded", "sdpa_blockmask"]


def cu(lengths):
    return torch.tensor([0] + lengths).cumsum(0).to(torch.int32)


def per_sample(q, k, v, q_lengths, k_lengths):
    """The definition: plain SDPA of each sample by itself."""
    outs, qa, ka = [], 0, 0
    for nq, nk in zip(q_lengths, k_lengths):
        outs.append(F.scaled_dot_product_attention(
            q[qa:qa + nq].transpose(0, 1), k[ka:ka + nk].transpose(0, 1),
            v[ka:ka + nk].transpose(0, 1)).transpose(0, 1))
        qa, ka = qa + nq, ka + nk
    return torch.cat(outs)


def inputs(q_lengths, k_lengths, heads=3, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(q_lengths), heads, dim, generator=g, dtype=torch.float64)
    k = torch.randn(sum(k_lengths), heads, dim, generator=g, dtype=torch.float64)
    v = torch.randn(sum(k_lengths), heads, dim, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("q_lengths,k_lengths", [
    ([7, 1, 12], [7, 1, 12]),  # self-attention, uneven samples
    ([5, 9], [3, 4]),  # cross-attention to captions
    ([16], [16]),  # one sample
])
def test_backends_equal_each_sample_alone(backend, q_lengths, k_lengths):
    q, k, v = inputs(q_lengths, k_lengths)
    out = varlen_attention(q, k, v, SeqLayout.from_cu_seqlens(cu(q_lengths)),
                           SeqLayout.from_cu_seqlens(cu(k_lengths)), backend)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want_out = per_sample(q, k, v, q_lengths, k_lengths)
    want = torch.autograd.grad(want_out, (q, k, v), grad)
    torch.testing.assert_close(out, want_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_segments_take_views_and_leak_nothing():
    """Changing sample 1's keys and values changes sample 1's outputs only, and its queries get
    no gradient from the other samples."""
    lengths = [6, 4, 5]
    q, k, v = inputs(lengths, lengths, seed=1)
    lay = SeqLayout.from_cu_seqlens(cu(lengths))
    base = varlen_attention(q, k, v, lay, lay, "sdpa_segments")
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[6:10] += 1.0
    v2[6:10] -= 2.0
    out = varlen_attention(q, k2, v2, lay, lay, "sdpa_segments")
    torch.testing.assert_close(out[:6], base[:6])
    torch.testing.assert_close(out[10:], base[10:])
    assert (out[6:10] - base[6:10]).abs().max() > 1e-3
    dq, dk = torch.autograd.grad(base[:6].sum(), (q, k))
    assert dq[6:].abs().max() == 0 and dk[6:].abs().max() == 0


def test_segments_skip_samples_without_queries():
    """Under Ulysses a rank's cross-attention queries may hold no token of some sample."""
    q_lengths, k_lengths = [0, 5, 0], [2, 3, 4]
    q, k, v = inputs(q_lengths, k_lengths)
    q_layout = SeqLayout.from_cu_seqlens(cu(q_lengths), allow_empty=True)
    k_layout = SeqLayout.from_cu_seqlens(cu(k_lengths))
    out = varlen_attention(q, k, v, q_layout, k_layout, "sdpa_segments")
    want = F.scaled_dot_product_attention(q.transpose(0, 1), k[2:5].transpose(0, 1),
                                          v[2:5].transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(out, want)
    empty = varlen_attention(q[:0], k, v, SeqLayout.from_cu_seqlens(cu([0, 0, 0]), True),
                             k_layout, "sdpa_segments")
    assert empty.shape == (0, 3, 8)


def test_auto_takes_the_segments_on_a_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa_segments"
