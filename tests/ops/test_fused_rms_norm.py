"""The fused RMSNorm kernels against the PyTorch reference: gradcheck in float64, float32 and
bfloat16 within tolerance, contiguous and row-strided inputs, every CPU instruction set, every
output element written, and bad inputs refused."""

import pytest
import torch

from megagoku.ops import rms_norm, rms_norm_reference
from megagoku.ops.fused import rms_norm_fused
from tests.ops.kernels import TOLERANCE, cpu_isa, extension, poisoned  # noqa: F401 (fixture)

# Goku-2B and -8B widths, the head dim, odd sizes (no vector width divides them), one column.
WIDTHS = [1792, 3072, 64, 97, 33, 1]


def compare(x, weight, dtype):
    """Forward and backward of the fused op against the reference computed in float64."""
    x = x.to(dtype).requires_grad_()
    # Weights stay fp32 (as the model's parameters under bf16 autocast), fp64 in fp64 tests.
    w_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = None if weight is None else weight.to(w_dtype).requires_grad_()
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    inputs = (x,) if w is None else (x, w)
    out = rms_norm_fused(x, w, 1e-6)
    grads = torch.autograd.grad(out, inputs, dy)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = rms_norm_reference(ref_inputs[0], ref_inputs[1] if w is not None else None, 1e-6)
    ref_grads = torch.autograd.grad(ref, ref_inputs, dy.double())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, **tol)
    for got, want in zip(grads, ref_grads):
        # The weight gradient sums over rows: its tolerance scales with their number.
        scale = 1.0 if got.shape == x.shape else max(1.0, x.numel() / x.shape[-1]) ** 0.5
        torch.testing.assert_close(got.double(), want, atol=tol["atol"] * scale, rtol=tol["rtol"])


@pytest.mark.parametrize("shape", [(5, 8), (3, 4, 17), (2, 64)])
@pytest.mark.parametrize("with_weight", [True, False])
def test_gradcheck_float64(shape, with_weight):
    extension()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(shape[-1], dtype=torch.float64, generator=g).requires_grad_()
    fn = (lambda x, w: rms_norm_fused(x, w, 1e-6)) if with_weight else \
        (lambda x: rms_norm_fused(x, None, 1e-6))
    assert torch.autograd.gradcheck(fn, (x, w) if with_weight else (x,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", WIDTHS)
def test_matches_reference(cpu_isa, dtype, width):
    g = torch.Generator().manual_seed(width)
    rows = 37  # not a multiple of any thread count or lane width
    compare(torch.randn(rows, width, generator=g) * 3 + 0.5, torch.randn(width, generator=g),
            dtype)
    compare(torch.randn(rows, width, generator=g), None, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_rows_are_read_in_place(cpu_isa, dtype):
    """Q of a fused QKV output (tokens, heads, 3, head_dim)[:, :, 0]: rows 3 * head_dim apart."""
    extension()
    qkv = torch.randn(11, 4, 3, 64, dtype=dtype)
    q = qkv[:, :, 0]
    rows = q.view(-1, 64)
    assert rows.stride(0) == 3 * 64 and rows.data_ptr() == qkv.data_ptr()  # a view, no copy
    compare(q, torch.randn(64), dtype)
    # Leading dims that do not collapse to one stride are copied, and still right.
    compare(torch.randn(6, 5, 32).transpose(0, 1), torch.randn(32), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_output_element_is_written(cpu_isa, dtype):
    C = extension()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(29, 97).to(dtype)
    w = torch.randn(97)
    y, rstd = poisoned(x.shape, dtype), poisoned((29,), acc)
    C.rms_norm_forward(x, w, 1e-6, y, rstd)
    dx, dw = poisoned(x.shape, dtype), poisoned((97,), acc)
    C.rms_norm_backward(torch.randn(29, 97).to(dtype), x, w, rstd, dx, dw)
    for name, t in (("y", y), ("rstd", rstd), ("dx", dx), ("dweight", dw)):
        assert not t.isnan().any(), f"{name} has unwritten elements"
    torch.testing.assert_close(y.double(), rms_norm_reference(x.double(), w.double(), 1e-6),
                               **TOLERANCE[dtype])


def test_result_does_not_depend_on_the_thread_count():
    extension()
    x = torch.randn(64, 1792).requires_grad_()
    w = torch.randn(1792).requires_grad_()
    dy = torch.randn(64, 1792)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = rms_norm_fused(x, w, 1e-6)
            results.append((out, *torch.autograd.grad(out, (x, w), dy)))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=0, rtol=0)  # per row: exact


def test_bad_inputs_are_refused():
    C = extension()
    x = torch.randn(4, 8)
    rstd = torch.empty(4)
    with pytest.raises(RuntimeError, match="float16 runs on CUDA only"):
        rms_norm_fused(x.half(), None, 1e-6)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        C.rms_norm_forward(x.int(), None, 1e-6, torch.empty(4, 8, dtype=torch.int32), rstd)
    with pytest.raises(RuntimeError, match="weight has 7 elements for rows of 8"):
        rms_norm_fused(x, torch.ones(7), 1e-6)
    with pytest.raises(RuntimeError, match="does not match x"):
        C.rms_norm_forward(x, None, 1e-6, torch.empty(4, 9), rstd)
    with pytest.raises(RuntimeError, match="contiguous columns"):
        C.rms_norm_forward(x.t(), None, 1e-6, torch.empty(8, 4), torch.empty(8))


def test_dispatch_uses_the_fused_kernel_and_the_reference_on_request():
    extension()
    x = torch.randn(6, 16)
    w = torch.randn(16)
    fused_out = rms_norm(x, w, 1e-6, "fused")
    assert fused_out.grad_fn is None  # no grad needed: still the kernel's output
    with torch.enable_grad():
        assert type(rms_norm(x.requires_grad_(), w, 1e-6, "auto").grad_fn).__name__ == \
            "FusedRMSNormBackward"
        assert type(rms_norm(x, w, 1e-6, "reference").grad_fn).__name__ != "FusedRMSNormBackward"
    torch.testing.assert_close(fused_out, rms_norm_reference(x, w, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_outputs_are_streamed_whole(cpu_isa, dtype):
    """Outputs past STREAM_OUTPUT_BYTES are written with non-temporal stores in 64-byte lines;
    an odd width puts every row at another alignment (head, lines and tail all used)."""
    C = extension()
    rows, cols = 2300, 1031
    assert rows * cols * torch.finfo(dtype).bits // 8 >= C.STREAM_OUTPUT_BYTES
    x = torch.randn(rows, cols).to(dtype)
    w = torch.randn(cols)
    y, rstd = poisoned(x.shape, dtype), poisoned((rows,), torch.float32)
    C.rms_norm_forward(x, w, 1e-6, y, rstd)
    dy = torch.randn(rows, cols).to(dtype)
    dx, dw = poisoned(x.shape, dtype), poisoned((cols,), torch.float32)
    C.rms_norm_backward(dy, x, w, rstd, dx, dw)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    ref = rms_norm_reference(xr, wr, 1e-6)
    ref_dx, ref_dw = torch.autograd.grad(ref, (xr, wr), dy.double())
    torch.testing.assert_close(y.double(), ref, **TOLERANCE[dtype])
    torch.testing.assert_close(dx.double(), ref_dx, **TOLERANCE[dtype])
    torch.testing.assert_close(dw.double(), ref_dw, atol=TOLERANCE[dtype]["atol"] * rows ** 0.5,
                               rtol=TOLERANCE[dtype]["rtol"])
