"""The CUDA kernels of csrc/ on a GPU: RMSNorm, Goku's whole-width Q/K RMSNorm (also its
tensor-parallel path: partial sums, then the normalisation with the total), the modulated norm,
the gated residual and 3D RoPE against the float64 reference in fp32, bf16 and fp16 (forward and backward), strided
inputs read in place, every output element written, run-to-run bit-identical results (the weight
and per-sample sums have a fixed order), agreement with the CPU kernels, and a whole model whose
fused and reference ops agree under bf16 autocast.

Each test runs twice: on the GPU ("gpu", where torch sees one: `launchers/gpu_check.sh` runs them
on a lent one; on such a machine an extension built without CUDA fails them, the kernels are the
product), and on cuda_sim ("sim", everywhere: the same CUDA sources compiled for a GPU simulated on
the CPU, tests/csrc/cuda_sim.py), where the tensors are CPU tensors and `fused._C` is the simulated
build, so that CI, which has no GPU, runs the CUDA kernels' logic: indexing, strides, vector
paths, grid-stride loops, warp sums, the fixed-order weight sums, the launch plans.
"""

from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import pytest
import torch

from megagoku.ops import (apply_rope, gated_residual_reference, modulated_norm_reference,
                          rms_norm_reference, rope_angles, rope_inv_freq,
                          whole_width_rms_norm_reference)
from megagoku.ops import fused
from megagoku.ops.fused import (gated_residual_fused, modulated_norm_fused, rms_norm_fused,
                                rope_fused, whole_width_rms_norm_fused)
from tests.ops.test_fused_rope import SPLITS, packed_positions


CUDA_TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=2e-5),
                  torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
                  torch.float16: dict(atol=2e-3, rtol=2e-3)}
DTYPES = list(CUDA_TOLERANCE)
# Whole warps per row (1792, 3072, 97, 33), and the short rows that a group of lanes takes (8 or
# 16 lanes, 4 or 2 rows per warp): 64 (16 lanes in fp32, 8 in bf16/fp16), 128 (32 / 16), 32 (8),
# and with scalar loads (no vectors: the width is not a multiple of them) 13 (16 lanes) and 1 (8).
WIDTHS = [1792, 3072, 64, 128, 32, 97, 33, 13, 1]


CPU_KERNELS = fused._C  # the CPU kernels, for the CUDA == CPU tests on both backends
ON = SimpleNamespace(backend="gpu", device="cuda")  # set by the backend fixture


@pytest.fixture(scope="session")
def simulated_kernels():
    from tests.csrc.cuda_sim import build

    return build()


@pytest.fixture(autouse=True, params=["gpu", "sim"])
def backend(request, monkeypatch):
    if request.param == "gpu":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU (the sim backend runs these kernels on the CPU)")
        reason = fused.unavailable_reason("cuda")
        assert reason is None, reason
        monkeypatch.setattr(ON, "backend", "gpu")
        monkeypatch.setattr(ON, "device", "cuda")
        yield
        torch.cuda.synchronize()
    else:
        assert CPU_KERNELS is not None, fused.unavailable_reason("cpu")
        monkeypatch.setattr(fused, "_C", request.getfixturevalue("simulated_kernels"))
        monkeypatch.setattr(ON, "backend", "sim")
        monkeypatch.setattr(ON, "device", "cpu")
        yield


@contextmanager
def on_cpu_kernels():
    """The fused ops call the CPU kernels inside (on "sim" the simulated CUDA ones outside)."""
    simulated, fused._C = fused._C, CPU_KERNELS
    try:
        yield
    finally:
        fused._C = simulated


def rows(n: int) -> int:
    """n rows on the GPU; an eighth of them plus one on the simulation (it is ~100x slower), whose
    grid holds at most 96 rows at once (6 blocks of 4 warps of up to 4 rows): the grid-stride
    loops still wrap there."""
    return n if ON.backend == "gpu" else n // 8 + 1


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=ON.device)


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(ON.device)


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
    assert out.device.type == ON.device and out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    for got, want in zip(grads, ref_grads):
        scale = 1.0 if got.shape == x.shape else max(1.0, x.numel() / x.shape[-1]) ** 0.5
        torch.testing.assert_close(got.cpu().double(), want, atol=tol["atol"] * scale,
                                   rtol=tol["rtol"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_rms_norm_matches_reference(dtype, width):
    # 4099 rows (513 simulated): more blocks than the grid, not a multiple of a warp's rows.
    check_rms_norm(randn(rows(4099), width, seed=width) * 3 + 0.5, randn(width, seed=7), dtype)
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
    n, cols = rows(5003), 1792
    x, dy, w = randn(n, cols, dtype=dtype), randn(n, cols, seed=3, dtype=dtype), randn(cols)
    results = []
    for _ in range(2):
        y, rstd = poisoned(x.shape, dtype), poisoned((n,), torch.float32)
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
    for device, kernels in ((ON.device, nullcontext()), ("cpu", on_cpu_kernels())):
        with kernels:
            xd = x.to(device).requires_grad_()
            wd = w.to(device).requires_grad_()
            out = rms_norm_fused(xd, wd, 1e-6)
            outs.append([t.cpu().float() for t in (out, *torch.autograd.grad(out, (xd, wd),
                                                                              dy.to(device)))])
    tol = CUDA_TOLERANCE[dtype]
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=tol["atol"] * 20, rtol=tol["rtol"])


def test_rms_norm_refuses_outputs_on_another_device():
    if ON.backend == "sim":
        pytest.skip("the simulation has one device: the bindings' device check needs a GPU")
    x = randn(4, 8)
    with pytest.raises(RuntimeError, match="does not match x"):
        fused._C.rms_norm_forward(x, torch.ones(8), 1e-6, torch.empty(4, 8),
                                  torch.empty(4, device="cuda"))
    with pytest.raises(RuntimeError, match="rstd must be .* elements on cuda"):
        fused._C.rms_norm_forward(x, torch.ones(8), 1e-6, torch.empty_like(x), torch.empty(4))


def check_against_float64(fn, ref_fn, inputs, dy, dtype, sums_over=1):
    """fn on the GPU against ref_fn in float64 on the CPU, forward and every input's gradient;
    gradients that are sums over `sums_over` rows get a tolerance growing with its root."""
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, dy)
    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in inputs]
    ref = ref_fn(*ref_inputs)
    ref_grads = torch.autograd.grad(ref, ref_inputs, dy.cpu().double())
    tol = CUDA_TOLERANCE[dtype]
    assert out.device.type == ON.device and out.dtype == dtype
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        scale = 1.0 if got.shape == out.shape else sums_over ** 0.5
        torch.testing.assert_close(got.cpu().double(), want, atol=tol["atol"] * scale * 4,
                                   rtol=tol["rtol"] * 4, msg=lambda m, i=i: f"input {i}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(28, 64), (48, 64), (3, 17), (1, 64)])
def test_whole_width_rms_norm_matches_reference_in_place(dtype, shape):
    heads, head_dim = shape
    n = rows(4099)
    qkv = randn(n, heads, 3, head_dim, seed=heads, dtype=dtype).requires_grad_()
    w = randn(heads * head_dim, seed=2).requires_grad_()
    dy = randn(n, heads, head_dim, seed=3, dtype=dtype)
    check_against_float64(
        lambda qkv, w: whole_width_rms_norm_fused(qkv[:, :, 1], w, 1e-6),
        lambda qkv, w: whole_width_rms_norm_reference(qkv[:, :, 1], w, 1e-6),
        (qkv, w), dy, dtype, sums_over=n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_width_tensor_parallel_path_matches_reference(dtype):
    """The partial sums kernel plus the normalisation from given totals (here: twice this rank's
    sums, as if another rank held heads with the same squares)."""
    n = rows(777)
    qkv = randn(n, 6, 3, 64, seed=5, dtype=dtype).requires_grad_()
    w = randn(6 * 64, seed=6).requires_grad_()
    dy = randn(n, 6, 64, seed=7, dtype=dtype)
    check_against_float64(
        lambda qkv, w: whole_width_rms_norm_fused(qkv[:, :, 0], w, 1e-6, 2 * 6 * 64,
                                                  lambda t: 2 * t),
        lambda qkv, w: whole_width_rms_norm_reference(qkv[:, :, 0], w, 1e-6, 2 * 6 * 64,
                                                      lambda t: 2 * t),
        (qkv, w), dy, dtype, sums_over=n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("width", [1792, 3072, 97])
def test_modulated_norm_matches_reference(dtype, kind, width):
    # A sample without tokens, a short one, long ones.
    lengths = [rows(1000), 0, 3, rows(2500), rows(596)]
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    segment = segment.to(ON.device)
    x = (randn(sum(lengths), width, seed=width, dtype=dtype) * 3 + 0.5).requires_grad_()
    shift = randn(len(lengths), width, seed=1).requires_grad_()
    scale = (randn(len(lengths), width, seed=2) * 0.5).requires_grad_()
    dy = randn(sum(lengths), width, seed=3, dtype=dtype)
    if kind == "rms":
        w = randn(width, seed=4).requires_grad_()
        check_against_float64(
            lambda x, s, c, w: modulated_norm_fused(x, "rms", w, 1e-6, s, c, segment),
            lambda x, s, c, w: modulated_norm_reference(x, "rms", w, 1e-6, s, c, segment.cpu()),
            (x, shift, scale, w), dy, dtype, sums_over=max(lengths))
    else:
        check_against_float64(
            lambda x, s, c: modulated_norm_fused(x, "layer", None, 1e-6, s, c, segment),
            lambda x, s, c: modulated_norm_reference(x, "layer", None, 1e-6, s, c, segment.cpu()),
            (x, shift, scale), dy, dtype, sums_over=max(lengths))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [1792, 97])
def test_gated_residual_matches_reference(dtype, width):
    lengths = [rows(1000), 0, 3, rows(2500)]
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    segment = segment.to(ON.device)
    x = randn(sum(lengths), width, seed=width, dtype=dtype).requires_grad_()
    out = randn(sum(lengths), width, seed=1, dtype=dtype).requires_grad_()
    gate = randn(len(lengths), width, seed=2).requires_grad_()
    dy = randn(sum(lengths), width, seed=3, dtype=dtype)
    check_against_float64(
        lambda x, g, o: gated_residual_fused(x, g, o, segment),
        lambda x, g, o: gated_residual_reference(x, g, o, segment.cpu()),
        (x, gate, out), dy, dtype, sums_over=max(lengths))


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_kernels_write_every_element_and_are_bit_identical_run_to_run(dtype):
    C = fused._C
    first, last = rows(2000), rows(3003)
    n, heads, head_dim, width = first + last, 28, 64, 1792
    qkv = randn(n, heads, 3, head_dim, dtype=dtype)
    x, w = qkv[:, :, 0], randn(heads * head_dim)
    dy = randn(n, heads, head_dim, seed=3, dtype=dtype)
    segment = torch.repeat_interleave(torch.arange(3), torch.tensor([first, 0, last])).to(ON.device)
    hx, hdy = randn(n, width, seed=4, dtype=dtype), randn(n, width, seed=5, dtype=dtype)
    shift, scale, gain = randn(3, width, seed=6), randn(3, width, seed=7), randn(width, seed=8)
    results = []
    for _ in range(2):
        y, rstd = poisoned((n, heads, head_dim), dtype), poisoned((n,), torch.float32)
        C.whole_width_rms_norm_forward(x, w, 1e-6, heads * head_dim, None, y, rstd)
        dx, dw = poisoned((n, heads, head_dim), dtype), poisoned((heads * head_dim,),
                                                                  torch.float32)
        C.whole_width_rms_norm_backward(dy, x, w, rstd, heads * head_dim, None, dx, dw)
        sums = poisoned((n,), torch.float32)
        C.whole_width_partial_sums(dy, w, x, sums)
        out = {"y": y, "rstd": rstd, "dx": dx, "dweight": dw, "sums": sums}
        for kind in ("layer", "rms"):
            my, mr = poisoned((n, width), dtype), poisoned((n,), torch.float32)
            mean = poisoned((n,), torch.float32) if kind == "layer" else None
            kw = gain if kind == "rms" else None
            C.modulated_norm_forward(hx, kind, kw, 1e-6, shift, scale, segment, my, mean, mr)
            mdx = poisoned((n, width), dtype)
            ds, dc = poisoned((3, width), torch.float32), poisoned((3, width), torch.float32)
            mdw = poisoned((width,), torch.float32) if kind == "rms" else None
            C.modulated_norm_backward(hdy, hx, kind, kw, scale, segment, mean, mr, mdx, ds, dc, mdw)
            out.update({f"{kind}/{k}": v for k, v in (("y", my), ("rstd", mr), ("dx", mdx),
                                                      ("dshift", ds), ("dscale", dc))})
            out.update({f"{kind}/mean": mean} if mean is not None else {f"{kind}/dweight": mdw})
        gy, gdout = poisoned((n, width), dtype), poisoned((n, width), dtype)
        gdgate = poisoned((3, width), torch.float32)
        C.gated_residual_forward(hx, shift, hdy, segment, gy)
        C.gated_residual_backward(hdy, shift, hx, segment, gdout, gdgate)
        out.update({"gate/y": gy, "gate/dout": gdout, "gate/dgate": gdgate})
        for name, t in out.items():
            assert not t.isnan().any(), f"{name} has unwritten elements"
        assert torch.equal(out["layer/dshift"][1], torch.zeros(width, device=ON.device))
        assert torch.equal(out["gate/dgate"][1], torch.zeros(width, device=ON.device))
        results.append(out)
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_new_kernels_cuda_agree_with_the_cpu_kernels(dtype):
    tol = CUDA_TOLERANCE[dtype]
    qkv, w = randn(300, 48, 3, 64, dtype=dtype), randn(48 * 64)
    dy = randn(300, 48, 64, seed=4, dtype=dtype)
    segment = torch.repeat_interleave(torch.arange(2), torch.tensor([120, 180]))
    hx, hdy = randn(300, 3072, seed=5, dtype=dtype), randn(300, 3072, seed=6, dtype=dtype)
    shift, scale, gain = randn(2, 3072, seed=7), randn(2, 3072, seed=8), randn(3072, seed=9)
    outs = []
    for device, kernels in ((ON.device, nullcontext()), ("cpu", on_cpu_kernels())):
        with kernels:
            q = qkv.to(device).requires_grad_()
            wd = w.to(device).requires_grad_()
            out = whole_width_rms_norm_fused(q[:, :, 0], wd, 1e-6)
            result = [out, *torch.autograd.grad(out, (q, wd), dy.to(device))]
            xd, sd, cd, gd = (t.to(device).requires_grad_() for t in (hx, shift, scale, gain))
            out = modulated_norm_fused(xd, "rms", gd, 1e-6, sd, cd, segment.to(device))
            result += [out, *torch.autograd.grad(out, (xd, sd, cd, gd), hdy.to(device))]
            outs.append([t.cpu().float() for t in result])
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=tol["atol"] * 40, rtol=tol["rtol"])


def rotate(x, positions, split, inplace=False):
    return rope_fused(x, positions, rope_inv_freq(split, 10000.0).to(ON.device), split, inplace)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", SPLITS)
def test_rope_matches_reference_on_a_packed_sequence(dtype, split):
    positions = packed_positions()
    x = randn(positions.shape[0], 3, sum(split), dtype=dtype).requires_grad_()
    dy = randn(*x.shape, seed=1, dtype=dtype)
    out = rotate(x, positions.to(ON.device), split)
    (dx,) = torch.autograd.grad(out, (x,), dy)
    xr = x.detach().cpu().double().requires_grad_()
    ref = apply_rope(xr, rope_angles(positions, split, 10000.0))
    (dref,) = torch.autograd.grad(ref, (xr,), dy.cpu().double())
    torch.testing.assert_close(out.cpu().double(), ref, **CUDA_TOLERANCE[dtype])
    torch.testing.assert_close(dx.cpu().double(), dref, **CUDA_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_in_place_strided_and_every_element_written(dtype):
    positions = packed_positions([(8, 16, 16), (1, 6, 5)]).to(ON.device)
    split = (16, 24, 24)
    qkv = randn(positions.shape[0], 6, 3, 64, dtype=dtype)
    k = qkv[:, :, 1]
    ref = apply_rope(k.cpu().double(), rope_angles(positions.cpu(), split, 10000.0))
    out = poisoned(k.shape, dtype)
    fused._C.rope_3d(k, out, positions, rope_inv_freq(split, 10000.0).to(ON.device), 8, 12, False)
    assert not out.isnan().any()
    torch.testing.assert_close(out.cpu().double(), ref, **CUDA_TOLERANCE[dtype])
    before = qkv.clone()
    rotate(k, positions, split, inplace=True)  # writes K's elements alone
    assert torch.equal(qkv[:, :, 1], out)
    assert torch.equal(qkv[:, :, 0], before[:, :, 0]) and torch.equal(qkv[:, :, 2], before[:, :, 2])


def test_a_model_on_the_gpu_gives_the_same_result_with_fused_and_reference_ops():
    """The whole Goku block stack (norms, whole-width QK norm, float32 modulated norms, RoPE) on
    the GPU under bf16 autocast (on cuda_sim in fp32): fused and reference ops agree, and both
    agree with the fp32 CPU model."""
    from megagoku.models import build_model
    from tests.conftest import randomize, small_model_config
    from tests.models.test_goku import TEXT_LENS, make_inputs

    batch, texts, timesteps = make_inputs()
    text_cu = torch.tensor([0] + TEXT_LENS).cumsum(0).to(torch.int32)
    args = (batch.tokens, timesteps, batch.positions, batch.cu_seqlens, torch.cat(texts), text_cu)
    outputs = {}
    for kernels in ("fused", "reference"):
        model = randomize(build_model(small_model_config(kernels=kernels))).to(ON.device)
        # cuda_sim: float32 (megatron's linear layers have no backward under CPU autocast).
        with torch.autocast(ON.device, dtype=torch.bfloat16, enabled=ON.backend == "gpu"):
            out = model(*(a.to(ON.device) for a in args))
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
