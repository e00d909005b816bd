"""The fused modulated norm (Goku's released block: LayerNorm or RMSNorm, then
x * (1 + scale) + shift in float32 with per-sample shift and scale) and gated residual
(x + gate * out, the product in float32) against their PyTorch references: gradcheck in float64,
float32 and bfloat16 within tolerance, packs whose samples hold few, many or no tokens, strided
rows, every CPU instruction set, every output element written, and bad inputs refused."""

import pytest
import torch

from megagoku.ops import (gated_residual, gated_residual_reference, modulated_norm,
                          modulated_norm_reference)
from megagoku.ops.fused import gated_residual_fused, modulated_norm_fused
from tests.ops.kernels import TOLERANCE, cpu_isa, extension, poisoned  # noqa: F401 (fixture)

# Tokens per sample: one sample; several of uneven length; a sample without tokens here (a
# Ulysses slice can hold none of a sample); many short ones.
PACKS = [[37], [5, 20, 1, 11], [9, 0, 14], [3] * 17]
# Goku-2B, a head-dim-like width, odd sizes (no vector width divides them); not 1: a LayerNorm
# of one element is 0 whatever its input (its input gradient is rounding noise times 1/sqrt(eps)).
WIDTHS = [1792, 64, 97, 3]


def segment_of(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def compare(x, kind, weight, shift, scale, segment, dtype):
    """Forward and backward of the fused op against the reference computed in float64."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = x.to(dtype).requires_grad_()
    shift, scale = (t.to(acc).requires_grad_() for t in (shift, scale))
    w = None if weight is None else weight.to(acc).requires_grad_()
    inputs = (x, shift, scale) + ((w,) if w is not None else ())
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = modulated_norm_fused(x, kind, w, 1e-6, shift, scale, segment)
    grads = torch.autograd.grad(out, inputs, dy)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = modulated_norm_reference(ref_inputs[0], kind, ref_inputs[3] if w is not None else None,
                                   1e-6, ref_inputs[1], ref_inputs[2], segment)
    ref_grads = torch.autograd.grad(ref, ref_inputs, dy.double())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, **tol)
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        # Sums over tokens (shift, scale, gain): the tolerance grows with their number. The
        # reference's bf16 RMSNorm output rounds its gradient too; the kernel keeps it in fp32.
        scale_tol = 1.0 if i == 0 else max(1.0, x.shape[0]) ** 0.5
        if dtype == torch.bfloat16 and kind == "rms" and i > 0:
            scale_tol *= 4
        torch.testing.assert_close(got.double(), want, atol=tol["atol"] * scale_tol,
                                   rtol=tol["rtol"], msg=lambda m, i=i: f"input {i}: {m}")


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_gradcheck_float64(kind):
    extension()
    g = torch.Generator().manual_seed(0)
    segment = segment_of([3, 0, 4])
    x = torch.randn(7, 6, dtype=torch.float64, generator=g).requires_grad_()
    shift = torch.randn(3, 6, dtype=torch.float64, generator=g).requires_grad_()
    scale = torch.randn(3, 6, dtype=torch.float64, generator=g).requires_grad_()
    if kind == "rms":
        w = torch.randn(6, dtype=torch.float64, generator=g).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, s, c, w: modulated_norm_fused(x, "rms", w, 1e-6, s, c, segment),
            (x, shift, scale, w))
    assert torch.autograd.gradcheck(
        lambda x, s, c: modulated_norm_fused(x, kind, None, 1e-6, s, c, segment),
        (x, shift, scale))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("width", WIDTHS)
def test_matches_reference(cpu_isa, dtype, kind, width):
    for i, lengths in enumerate(PACKS):
        g = torch.Generator().manual_seed(width + i)
        rows = sum(lengths)
        x = torch.randn(rows, width, generator=g) * 3 + 0.5
        shift = torch.randn(len(lengths), width, generator=g)
        scale = torch.randn(len(lengths), width, generator=g) * 0.5
        weight = torch.randn(width, generator=g) if kind == "rms" else None
        compare(x, kind, weight, shift, scale, segment_of(lengths), dtype)
    if kind == "rms":
        compare(x, kind, None, shift, scale, segment_of(lengths), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_rows_and_modulation_rows_are_read_in_place(cpu_isa, dtype):
    """x with rows farther apart than its width; shift and scale as the model has them: chunks
    of one (samples, 6 * dim) adaLN output, rows 6 * dim apart."""
    extension()
    segment = segment_of([4, 6])
    wide = torch.randn(10, 80)
    mod = torch.randn(2, 6 * 64)
    shift, scale = mod[:, :64], mod[:, 64:128]
    assert shift.stride(0) == 6 * 64
    for kind in ("layer", "rms"):
        compare(wide[:, 8:72], kind, torch.randn(64) if kind == "rms" else None, shift, scale,
                segment, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_every_output_element_is_written(cpu_isa, dtype, kind):
    C = extension()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lengths = [9, 0, 20]
    segment = segment_of(lengths)
    x = torch.randn(29, 97).to(dtype)
    shift, scale = torch.randn(3, 97).to(acc), torch.randn(3, 97).to(acc)
    w = torch.randn(97) if kind == "rms" else None
    y, rstd = poisoned(x.shape, dtype), poisoned((29,), acc)
    mean = poisoned((29,), acc) if kind == "layer" else None
    C.modulated_norm_forward(x, kind, w, 1e-6, shift, scale, segment, y, mean, rstd)
    dx = poisoned(x.shape, dtype)
    dshift, dscale = poisoned((3, 97), acc), poisoned((3, 97), acc)
    dw = poisoned((97,), acc) if kind == "rms" else None
    C.modulated_norm_backward(torch.randn(29, 97).to(dtype), x, kind, w, scale, segment, mean,
                              rstd, dx, dshift, dscale, dw)
    outputs = {"y": y, "rstd": rstd, "dx": dx, "dshift": dshift, "dscale": dscale}
    outputs.update({"mean": mean} if mean is not None else {"dweight": dw})
    for name, t in outputs.items():
        assert not t.isnan().any(), f"{name} has unwritten elements"
    # The sample without tokens gets zero gradients.
    assert torch.equal(dshift[1], torch.zeros(97, dtype=acc))
    assert torch.equal(dscale[1], torch.zeros(97, dtype=acc))


def test_results_are_repeatable_and_do_not_depend_much_on_the_thread_count():
    """Bit-identical reruns at a thread count (the per-sample sums are added in a fixed order);
    another thread count splits the sums differently: the same within rounding."""
    extension()
    segment = segment_of([300, 57, 700])
    x = torch.randn(1057, 256).requires_grad_()
    shift = torch.randn(3, 256).requires_grad_()
    scale = torch.randn(3, 256).requires_grad_()
    w = torch.randn(256).requires_grad_()
    dy = torch.randn(1057, 256)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            out = modulated_norm_fused(x, "rms", w, 1e-6, shift, scale, segment)
            results.append((out, *torch.autograd.grad(out, (x, shift, scale, w), dy)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(results[1], results[2]):
        assert torch.equal(a, b)
    for one, two in zip(results[0], results[1]):
        torch.testing.assert_close(one, two, atol=1e-4, rtol=1e-5)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_bad_inputs_are_refused():
    C = extension()
    x = torch.randn(4, 8)
    shift, scale = torch.randn(2, 8), torch.randn(2, 8)
    segment = torch.tensor([0, 0, 1, 1])
    y, rstd, mean = torch.empty(4, 8), torch.empty(4), torch.empty(4)
    with pytest.raises(RuntimeError, match="norm kind must be 'layer' or 'rms'"):
        C.modulated_norm_forward(x, "group", None, 1e-6, shift, scale, segment, y, None, rstd)
    with pytest.raises(RuntimeError, match="segment\\[2\\] = 5 is not a sample in \\[0, 2\\)"):
        C.modulated_norm_forward(x, "rms", None, 1e-6, shift, scale, torch.tensor([0, 1, 5, 1]),
                                 y, None, rstd)
    with pytest.raises(RuntimeError, match="segment is not sorted"):
        C.modulated_norm_forward(x, "rms", None, 1e-6, shift, scale, torch.tensor([1, 0, 0, 1]),
                                 y, None, rstd)
    with pytest.raises(RuntimeError, match="segment must be a contiguous int64"):
        C.modulated_norm_forward(x, "rms", None, 1e-6, shift, scale, segment.int(), y, None, rstd)
    with pytest.raises(RuntimeError, match="shift must be Float \\[samples, 8\\]"):
        C.modulated_norm_forward(x, "rms", None, 1e-6, shift.double(), scale, segment, y, None,
                                 rstd)
    with pytest.raises(RuntimeError, match="mean buffer is for the layer norm only"):
        C.modulated_norm_forward(x, "rms", None, 1e-6, shift, scale, segment, y, mean, rstd)
    with pytest.raises(RuntimeError, match="modulated layer norm has no gain"):
        C.modulated_norm_forward(x, "layer", torch.ones(8), 1e-6, shift, scale, segment, y, mean,
                                 rstd)
    with pytest.raises(RuntimeError, match="float16 runs on CUDA only"):
        modulated_norm_fused(x.half(), "rms", None, 1e-6, shift, scale, segment)
    with pytest.raises(RuntimeError, match="dshift must be a contiguous"):
        C.modulated_norm_backward(x, x, "rms", None, scale, segment, None, rstd,
                                  torch.empty(4, 8), torch.empty(1, 8), torch.empty(2, 8), None)


def test_dispatch_uses_the_fused_kernel_and_the_reference_on_request():
    extension()
    x = torch.randn(6, 16, requires_grad=True)
    shift, scale = torch.randn(2, 16), torch.randn(2, 16)
    segment = torch.tensor([0, 0, 0, 1, 1, 1])
    fused_out = modulated_norm(x, "layer", None, 1e-6, shift, scale, segment, "auto")
    assert type(fused_out.grad_fn).__name__ == "FusedModulatedNormBackward"
    ref = modulated_norm(x, "layer", None, 1e-6, shift, scale, segment, "reference")
    assert not type(ref.grad_fn).__name__.startswith("Fused")
    torch.testing.assert_close(fused_out, ref)


def compare_gate(x, gate, out, segment, dtype):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x, out = (t.to(dtype).requires_grad_() for t in (x, out))
    gate = gate.to(acc).requires_grad_()
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = gated_residual_fused(x, gate, out, segment)
    grads = torch.autograd.grad(got, (x, gate, out), dy)
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, gate, out)]
    ref = gated_residual_reference(ref_inputs[0], ref_inputs[1], ref_inputs[2], segment)
    ref_grads = torch.autograd.grad(ref, ref_inputs, dy.double())
    tol = TOLERANCE[dtype]
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.double(), ref, **tol)
    for i, (g, want) in enumerate(zip(grads, ref_grads)):
        scale_tol = max(1.0, x.shape[0]) ** 0.5 if i == 1 else 1.0
        torch.testing.assert_close(g.double(), want, atol=tol["atol"] * scale_tol,
                                   rtol=tol["rtol"], msg=lambda m, i=i: f"input {i}: {m}")


def test_gated_residual_gradcheck_float64():
    extension()
    g = torch.Generator().manual_seed(0)
    segment = segment_of([3, 0, 4])
    x, out = (torch.randn(7, 6, dtype=torch.float64, generator=g).requires_grad_() for _ in "xo")
    gate = torch.randn(3, 6, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c, o: gated_residual_fused(x, c, o, segment),
                                    (x, gate, out))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", WIDTHS)
def test_gated_residual_matches_reference(cpu_isa, dtype, width):
    for i, lengths in enumerate(PACKS):
        g = torch.Generator().manual_seed(width + i)
        rows = sum(lengths)
        compare_gate(torch.randn(rows, width, generator=g), torch.randn(len(lengths), width,
                                                                         generator=g),
                     torch.randn(rows, width, generator=g) * 2, segment_of(lengths), dtype)
    # The gate as the block has it: a chunk of the adaLN output, rows 6 * dim apart.
    gate = torch.randn(len(lengths), 6 * width)[:, 2 * width:3 * width]
    compare_gate(torch.randn(rows, width), gate, torch.randn(rows, width), segment_of(lengths),
                 dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_gated_residual_writes_every_element(cpu_isa, dtype):
    C = extension()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    segment = segment_of([9, 0, 20])
    x, out = torch.randn(29, 97).to(dtype), torch.randn(29, 97).to(dtype)
    gate = torch.randn(3, 97).to(acc)
    y = poisoned(x.shape, dtype)
    C.gated_residual_forward(x, gate, out, segment, y)
    dout, dgate = poisoned(x.shape, dtype), poisoned((3, 97), acc)
    C.gated_residual_backward(torch.randn(29, 97).to(dtype), gate, out, segment, dout, dgate)
    for name, t in (("y", y), ("dout", dout), ("dgate", dgate)):
        assert not t.isnan().any(), f"{name} has unwritten elements"
    assert torch.equal(dgate[1], torch.zeros(97, dtype=acc))


def test_gated_residual_refuses_bad_inputs_and_dispatch_chooses():
    C = extension()
    x, out, gate = torch.randn(4, 8), torch.randn(4, 8), torch.randn(2, 8)
    segment = torch.tensor([0, 0, 1, 1])
    with pytest.raises(RuntimeError, match="out .* does not match x"):
        C.gated_residual_forward(x, gate, out.double(), segment, torch.empty(4, 8))
    with pytest.raises(RuntimeError, match="segment is not sorted"):
        C.gated_residual_forward(x, gate, out, torch.tensor([1, 0, 0, 1]), torch.empty(4, 8))
    with pytest.raises(RuntimeError, match="gate must be Float \\[samples, 8\\]"):
        C.gated_residual_forward(x, torch.randn(2, 7), out, segment, torch.empty(4, 8))
    with pytest.raises(ValueError, match="one \\(tokens, dim\\) shape and dtype"):
        gated_residual_fused(x, gate, out.double(), segment)
    x.requires_grad_()
    assert type(gated_residual(x, gate, out, segment, "auto").grad_fn).__name__ == \
        "FusedGatedResidualBackward"
    mixed = gated_residual(x, gate, out.double(), segment, "auto")  # the reference takes it
    assert not type(mixed.grad_fn).__name__.startswith("Fused")
    torch.testing.assert_close(gated_residual(x, gate, out, segment, "fused"),
                               gated_residual(x, gate, out, segment, "reference"))

