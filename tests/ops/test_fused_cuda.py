"""The CUDA kernels of csrc/ on a GPU: RMSNorm and 3D RoPE against the float64 reference in
fp32, bf16 and fp16 (forward and backward), strided inputs read in place, every output element
written, run-to-run bit-identical results (the dweight sum has a fixed order), agreement with the
CPU kernels, and a whole model whose fused and reference ops agree under bf16 autocast.

These run only where torch sees a GPU (CI has none; `tools/gpu_check.sh` runs them on a lent
one). On such a machine an extension built without CUDA fails them: the kernels are the product.
"""

import pytest
import torch

from megagoku.ops import apply_rope, rms_norm_reference, rope_angles, rope_inv_freq
from megagoku.ops import fused
from megagoku.ops.fused import rms_norm_fused, rope_fused
from tests.ops.test_fused_rope import SPLITS, packed_positions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA_TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=2e-5),
                  torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
                  torch.float16: dict(atol=2e-3, rtol=2e-3)}
DTYPES = list(CUDA_TOLERANCE)
WIDTHS = [1792, 3072, 64, 97, 33, 1]


@pytest.fixture(autouse=True)
def cuda_extension():
    reason = fused.unavailable_reason("cuda")
    assert reason is None, reason
    yield
    torch.cuda.synchronize()


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).cuda()


def check_rms_norm(x, weight, dtype):
    """Forward and backward on the GPU against the reference in float64 on the CPU."""
    x = x.to(dtype).requires_grad_()
    w = None if weight is None else weight.float().requires_grad_()
    dy = randn(*x.shape, seed=1, dtype=dtype)
    inputs = (x,) if w is None else (x, w)
    out = rms_norm_fused(x, w, 1e-6)
    grads = torch.autograd.grad(out, inputs, dy)
    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in inputs]
    ref = rms_norm_reference(ref_inputs[0], ref_inputs[1] if w is not None else None, 1e-6)
    ref_grads = torch.autograd.grad(ref, ref_inputs, dy.cpu().double())
    tol = CUDA_TOLERANCE[dtype]
    assert out.is_cuda and out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    for got, want in zip(grads, ref_grads):
        scale = 1.0 if got.shape == x.shape else max(1.0, x.numel() / x.shape[-1]) ** 0.5
        torch.testing.assert_close(got.cpu().double(), want, atol=tol["atol"] * scale,
                                   rtol=tol["rtol"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_rms_norm_matches_reference(dtype, width):
    # 4099 rows: more blocks than the grid and not a multiple of a warp's rows.
    check_rms_norm(randn(4099, width, seed=width) * 3 + 0.5, randn(width, seed=7), dtype)
    check_rms_norm(randn(37, width, seed=width + 1), None, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_reads_strided_rows_in_place(dtype):
    qkv = randn(11, 4, 3, 64, dtype=dtype)
    q = qkv[:, :, 0]
    assert q.reshape(-1, 64).data_ptr() == qkv.data_ptr()
    check_rms_norm(q, randn(64, seed=2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_writes_every_element_and_is_bit_identical_run_to_run(dtype):
    C = fused._C
    rows, cols = 5003, 1792
    x, dy, w = randn(rows, cols, dtype=dtype), randn(rows, cols, seed=3, dtype=dtype), randn(cols)
    results = []
    for _ in range(2):
        y, rstd = poisoned(x.shape, dtype), poisoned((rows,), torch.float32)
        C.rms_norm_forward(x, w, 1e-6, y, rstd)
        dx, dw = poisoned(x.shape, dtype), poisoned((cols,), torch.float32)
        C.rms_norm_backward(dy, x, w, rstd, dx, dw)
        for name, t in (("y", y), ("rstd", rstd), ("dx", dx), ("dweight", dw)):
            assert not t.isnan().any(), f"{name} has unwritten elements"
        results.append((y, rstd, dx, dw))
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_cuda_agrees_with_the_cpu_kernel(dtype):
    x, w, dy = randn(300, 3072, dtype=dtype), randn(3072), randn(300, 3072, seed=4, dtype=dtype)
    outs = []
    for device in ("cuda", "cpu"):
        xd = x.to(device).requires_grad_()
        wd = w.to(device).requires_grad_()
        out = rms_norm_fused(xd, wd, 1e-6)
        outs.append([t.cpu().float() for t in (out, *torch.autograd.grad(out, (xd, wd),
                                                                          dy.to(device)))])
    tol = CUDA_TOLERANCE[dtype]
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=tol["atol"] * 20, rtol=tol["rtol"])


def test_rms_norm_refuses_outputs_on_another_device():
    x = randn(4, 8)
    with pytest.raises(RuntimeError, match="does not match x"):
        fused._C.rms_norm_forward(x, torch.ones(8), 1e-6, torch.empty(4, 8),
                                  torch.empty(4, device="cuda"))
    with pytest.raises(RuntimeError, match="rstd must be .* elements on cuda"):
        fused._C.rms_norm_forward(x, torch.ones(8), 1e-6, torch.empty_like(x), torch.empty(4))


def rotate(x, positions, split, inplace=False):
    return rope_fused(x, positions, rope_inv_freq(split, 10000.0).cuda(), split, inplace)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", SPLITS)
def test_rope_matches_reference_on_a_packed_sequence(dtype, split):
    positions = packed_positions()
    x = randn(positions.shape[0], 3, sum(split), dtype=dtype).requires_grad_()
    dy = randn(*x.shape, seed=1, dtype=dtype)
    out = rotate(x, positions.cuda(), split)
    (dx,) = torch.autograd.grad(out, (x,), dy)
    xr = x.detach().cpu().double().requires_grad_()
    ref = apply_rope(xr, rope_angles(positions, split, 10000.0))
    (dref,) = torch.autograd.grad(ref, (xr,), dy.cpu().double())
    torch.testing.assert_close(out.cpu().double(), ref, **CUDA_TOLERANCE[dtype])
    torch.testing.assert_close(dx.cpu().double(), dref, **CUDA_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_in_place_strided_and_every_element_written(dtype):
    positions = packed_positions([(8, 16, 16), (1, 6, 5)]).cuda()
    split = (16, 24, 24)
    qkv = randn(positions.shape[0], 6, 3, 64, dtype=dtype)
    k = qkv[:, :, 1]
    ref = apply_rope(k.cpu().double(), rope_angles(positions.cpu(), split, 10000.0))
    out = poisoned(k.shape, dtype)
    fused._C.rope_3d(k, out, positions, rope_inv_freq(split, 10000.0).cuda(), 8, 12, False)
    assert not out.isnan().any()
    torch.testing.assert_close(out.cpu().double(), ref, **CUDA_TOLERANCE[dtype])
    before = qkv.clone()
    rotate(k, positions, split, inplace=True)  # writes K's elements alone
    assert torch.equal(qkv[:, :, 1], out)
    assert torch.equal(qkv[:, :, 0], before[:, :, 0]) and torch.equal(qkv[:, :, 2], before[:, :, 2])


def test_a_model_on_the_gpu_gives_the_same_result_with_fused_and_reference_ops():
    """The whole Goku block stack (norms, QK norm, RoPE in self-attention) on the GPU under bf16
    autocast: fused and reference ops agree, and both agree with the fp32 CPU model."""
    from megagoku.models import build_model
    from tests.conftest import randomize, small_model_config
    from tests.models.test_goku import TEXT_LENS, make_inputs

    batch, texts, timesteps = make_inputs()
    text_cu = torch.tensor([0] + TEXT_LENS).cumsum(0).to(torch.int32)
    args = (batch.tokens, timesteps, batch.positions, batch.cu_seqlens, torch.cat(texts), text_cu)
    outputs = {}
    for kernels in ("fused", "reference"):
        model = randomize(build_model(small_model_config(kernels=kernels))).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(*(a.cuda() for a in args))
        out.float().square().mean().backward()
        grads = {n: p.grad.float().cpu() for n, p in model.named_parameters()}
        outputs[kernels] = (out.float().cpu(), grads)
    cpu_model = randomize(build_model(small_model_config(kernels="reference")))
    cpu_out = cpu_model(*args)
    (f_out, f_grads), (r_out, r_grads) = outputs["fused"], outputs["reference"]
    # bf16 operands: relative errors of a few 1e-3 (METHOD: between 1e-3 and 1e-2), never NaN.
    assert relative_error(f_out, r_out) < 2e-2
    assert relative_error(f_out, cpu_out.detach()) < 2e-2
    for name in f_grads:
        assert relative_error(f_grads[name], r_grads[name]) < 5e-2, name


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, NaN-safe (a NaN anywhere gives inf)."""
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
