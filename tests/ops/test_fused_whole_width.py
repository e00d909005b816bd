"""The fused whole-width Q/K RMSNorm (Goku's released block) against its PyTorch reference:
gradcheck in float64, float32 and bfloat16 within tolerance, Q and K read in place inside a fused
per-head QKV output, the tensor-parallel path (partial sums, the all-reduce given to it, then the
normalisation) against one process, every CPU instruction set, every output element written, and
bad inputs refused."""

import threading

import pytest
import torch

from megagoku.ops import whole_width_rms_norm, whole_width_rms_norm_reference
from megagoku.ops.fused import whole_width_rms_norm_fused
from tests.ops.kernels import TOLERANCE, cpu_isa, extension, poisoned  # noqa: F401 (fixture)

# (heads, head_dim): Goku-2B and -8B (28 and 48 heads of 64), an odd piece no vector width
# divides, a 128 head dim, one head.
SHAPES = [(28, 64), (48, 64), (3, 17), (2, 128), (1, 64)]


def compare(x, weight, dtype, width=None, sum_partials=None):
    """Forward and backward of the fused op against the reference computed in float64."""
    x = x.to(dtype).requires_grad_()
    w_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = None if weight is None else weight.to(w_dtype).requires_grad_()
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    inputs = (x,) if w is None else (x, w)
    out = whole_width_rms_norm_fused(x, w, 1e-6, width, sum_partials)
    grads = torch.autograd.grad(out, inputs, dy)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = whole_width_rms_norm_reference(ref_inputs[0], ref_inputs[1] if w is not None else None,
                                         1e-6, width, sum_partials)
    ref_grads = torch.autograd.grad(ref, ref_inputs, dy.double())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, **tol)
    for got, want in zip(grads, ref_grads):
        scale = 1.0 if got.shape == x.shape else max(1.0, x.shape[0]) ** 0.5
        torch.testing.assert_close(got.double(), want, atol=tol["atol"] * scale, rtol=tol["rtol"])


@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("tp", [False, True])
def test_gradcheck_float64(with_weight, tp):
    extension()
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(6, 3, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(15, dtype=torch.float64, generator=g).requires_grad_()
    # The TP path with a stand-in all-reduce: another rank's heads add as much again (K of a
    # fused QKV output, read strided).
    kw = dict(width=30, sum_partials=lambda t: 2 * t) if tp else {}
    fn = (lambda q, w: whole_width_rms_norm_fused(q[:, :, 1], w, 1e-6, **kw)) if with_weight \
        else (lambda q: whole_width_rms_norm_fused(q[:, :, 1], None, 1e-6, **kw))
    assert torch.autograd.gradcheck(fn, (qkv, w) if with_weight else (qkv,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(cpu_isa, dtype, shape):
    heads, head_dim = shape
    g = torch.Generator().manual_seed(heads * head_dim)
    rows = 37  # not a multiple of any thread count or lane width
    x = torch.randn(rows, heads, head_dim, generator=g) * 3 + 0.5
    compare(x, torch.randn(heads * head_dim, generator=g), dtype)
    compare(torch.randn(rows, heads, head_dim, generator=g), None, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_q_and_k_are_read_in_place_inside_the_fused_qkv_output(cpu_isa, dtype):
    """(tokens, heads, 3, head_dim)[:, :, 0 or 1]: heads 3 * head_dim apart, tokens a row apart."""
    extension()
    qkv = torch.randn(11, 4, 3, 64, dtype=dtype)
    for part in (0, 1):
        x = qkv[:, :, part]
        assert x.stride() == (4 * 3 * 64, 3 * 64, 1) and x.data_ptr() == qkv[0, 0, part].data_ptr()
        compare(x, torch.randn(4 * 64), dtype)
    # Cross-attention's K inside its (tokens, heads, 2, head_dim) output, and a contiguous Q.
    compare(torch.randn(7, 4, 2, 32)[:, :, 0], torch.randn(128), dtype)
    compare(torch.randn(7, 4, 32), torch.randn(128), dtype)
    # A head dim that is not contiguous is copied first, and still right.
    compare(torch.randn(7, 32, 4).transpose(1, 2), torch.randn(128), dtype)


class TwoRankSum:
    """An all-reduce over two ranks run as two threads: each gives its partial, both get the sum."""

    def __init__(self):
        self.barrier = threading.Barrier(2, timeout=60)
        self.slots = [None, None]

    def for_rank(self, rank):
        def reduce(partial):
            self.slots[rank] = partial.clone()
            self.barrier.wait()
            total = self.slots[0] + self.slots[1]
            self.barrier.wait()
            return total
        return reduce


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tensor_parallel_halves_equal_one_process(cpu_isa, dtype):
    """Two ranks holding half of the heads each (and half of the gain), their partial sums added
    by an all-reduce forward and backward: the whole-width norm of one process."""
    extension()
    g = torch.Generator().manual_seed(5)
    heads, head_dim, rows = 6, 16, 23
    x = (torch.randn(rows, heads, head_dim, generator=g) * 2).to(dtype).requires_grad_()
    w = torch.randn(heads * head_dim, generator=g).requires_grad_()
    dy = torch.randn(rows, heads, head_dim, generator=g).to(dtype)
    whole = whole_width_rms_norm_fused(x, w, 1e-6)
    whole_dx, whole_dw = torch.autograd.grad(whole, (x, w), dy)

    halves = [slice(0, 3), slice(3, 6)]
    reduce = TwoRankSum()
    results = [None, None]

    def rank(r):
        h = halves[r]
        xr = x.detach()[:, h].clone().requires_grad_()
        wr = w.detach().view(heads, head_dim)[h].reshape(-1).clone().requires_grad_()
        out = whole_width_rms_norm_fused(xr, wr, 1e-6, heads * head_dim, reduce.for_rank(r))
        results[r] = (out, *torch.autograd.grad(out, (xr, wr), dy[:, h]))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(torch.cat([r[0] for r in results], dim=1), whole.detach(), **tol)
    torch.testing.assert_close(torch.cat([r[1] for r in results], dim=1), whole_dx, **tol)
    torch.testing.assert_close(torch.cat([r[2] for r in results]), whole_dw,
                               atol=tol["atol"] * rows ** 0.5, rtol=tol["rtol"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_output_element_is_written(cpu_isa, dtype):
    C = extension()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    qkv = torch.randn(29, 5, 3, 17).to(dtype)
    x = qkv[:, :, 0]
    w = torch.randn(85)
    y, rstd = poisoned((29, 5, 17), dtype), poisoned((29,), acc)
    C.whole_width_rms_norm_forward(x, w, 1e-6, 85, None, y, rstd)
    sums = poisoned((29,), acc)
    C.whole_width_partial_sums(x, w, x, sums)
    dy = torch.randn(29, 5, 17).to(dtype)
    dx, dw = poisoned((29, 5, 17), dtype), poisoned((85,), acc)
    C.whole_width_rms_norm_backward(dy, x, w, rstd, 85, None, dx, dw)
    for name, t in (("y", y), ("rstd", rstd), ("partial sums", sums), ("dx", dx), ("dweight", dw)):
        assert not t.isnan().any(), f"{name} has unwritten elements"
    torch.testing.assert_close(y.double(), whole_width_rms_norm_reference(x.double(), w.double(),
                                                                          1e-6),
                               **TOLERANCE[dtype])


def test_result_does_not_depend_on_the_thread_count():
    extension()
    x = torch.randn(64, 28, 64).requires_grad_()
    w = torch.randn(28 * 64).requires_grad_()
    dy = torch.randn(64, 28, 64)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = whole_width_rms_norm_fused(x, w, 1e-6)
            results.append((out, *torch.autograd.grad(out, (x, w), dy)))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)  # per row: exact
    torch.testing.assert_close(results[0][1], results[1][1], atol=0, rtol=0)


def test_bad_inputs_are_refused():
    C = extension()
    x = torch.randn(4, 2, 8)
    rstd = torch.empty(4)
    with pytest.raises(RuntimeError, match="float16 runs on CUDA only"):
        whole_width_rms_norm_fused(x.half(), None, 1e-6)
    with pytest.raises(RuntimeError, match="weight has 8 elements for 2 heads of 8"):
        whole_width_rms_norm_fused(x, torch.ones(8), 1e-6)
    with pytest.raises(RuntimeError, match="must be \\[tokens, heads, head_dim\\]"):
        C.whole_width_rms_norm_forward(x.view(4, 16), None, 1e-6, 16, None, torch.empty(4, 16),
                                       rstd)
    with pytest.raises(RuntimeError, match="does not match x"):
        C.whole_width_rms_norm_forward(x, None, 1e-6, 16, None, torch.empty(4, 2, 9), rstd)
    with pytest.raises(RuntimeError, match="width 8 is less than this rank's 2 heads of 8"):
        C.whole_width_rms_norm_forward(x, None, 1e-6, 8, None, torch.empty(4, 2, 8), rstd)
    with pytest.raises(RuntimeError, match="sum_sq must be a contiguous"):
        C.whole_width_rms_norm_forward(x, None, 1e-6, 16, torch.empty(3), torch.empty(4, 2, 8),
                                       rstd)
    with pytest.raises(RuntimeError, match="contiguous head dim"):
        C.whole_width_partial_sums(x.transpose(1, 2), None, x.transpose(1, 2), torch.empty(4))
    with pytest.raises(ValueError, match="wants \\(tokens, heads, head_dim\\)"):
        whole_width_rms_norm_fused(torch.randn(4, 16), None, 1e-6)


def test_dispatch_uses_the_fused_kernel_and_the_reference_on_request():
    extension()
    x = torch.randn(6, 2, 8, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    assert type(whole_width_rms_norm(x, w, 1e-6, kernels="auto").grad_fn).__name__ == \
        "FusedWholeWidthRMSNormBackward"
    ref = whole_width_rms_norm(x, w, 1e-6, kernels="reference")
    assert not type(ref.grad_fn).__name__.startswith("Fused")
    torch.testing.assert_close(whole_width_rms_norm(x, w, 1e-6, kernels="fused"), ref)
