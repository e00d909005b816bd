"""The fused 3D RoPE kernels against the PyTorch reference, on packed sequences of mixed
(T, H, W) grids: gradcheck in float64, float32 and bfloat16 within tolerance, in place and out of
place, strided heads, every CPU instruction set, every output element written, bad inputs
refused."""

import pytest
import torch

from megagoku.ops import Rope3D, apply_rope, rope_angles, rope_inv_freq
from megagoku.ops.fused import rope_fused
from tests.ops.kernels import TOLERANCE, cpu_isa, extension, poisoned  # noqa: F401 (fixture)

GRIDS = [(1, 6, 5), (4, 3, 2), (2, 1, 7), (3, 4, 4)]  # an image and clips, packed
SPLITS = [(16, 24, 24), (4, 6, 6), (0, 8, 8), (2, 2, 4)]  # head dims 64, 16, 16, 8


def packed_positions(grids=GRIDS) -> torch.Tensor:
    parts = [torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                        indexing="ij"), dim=-1).reshape(-1, 3)
             for t, h, w in grids]
    return torch.cat(parts)


def rotate_fused(x, positions, split, inplace=False):
    return rope_fused(x, positions, rope_inv_freq(split, 10000.0), split, inplace)


def test_gradcheck_float64():
    extension()
    positions = packed_positions([(2, 2, 1), (1, 1, 3)])
    x = torch.randn(positions.shape[0], 3, 8, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: rotate_fused(x, positions, (2, 2, 4)), (x,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", SPLITS)
def test_matches_reference_on_a_packed_sequence(cpu_isa, dtype, split):
    positions = packed_positions()
    heads, head_dim = 3, sum(split)
    x = torch.randn(positions.shape[0], heads, head_dim).to(dtype).requires_grad_()
    dy = torch.randn(x.shape).to(dtype)
    out = rotate_fused(x, positions, split)
    (dx,) = torch.autograd.grad(out, (x,), dy)
    xr = x.detach().double().requires_grad_()
    ref = apply_rope(xr, rope_angles(positions, split, 10000.0))
    (dref,) = torch.autograd.grad(ref, (xr,), dy.double())
    torch.testing.assert_close(out.double(), ref, **TOLERANCE[dtype])
    torch.testing.assert_close(dx.double(), dref, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_equals_out_of_place_and_keeps_gradients(cpu_isa, dtype):
    positions = packed_positions()
    split = (16, 24, 24)
    x = torch.randn(positions.shape[0], 4, 64).to(dtype).requires_grad_()
    dy = torch.randn(x.shape).to(dtype)
    out = rotate_fused(x, positions, split)
    (dx,) = torch.autograd.grad(out, (x,), dy)
    fresh = x * 1  # a non-leaf the rotation may overwrite, as the norm's output in the model
    rotated = rotate_fused(fresh, positions, split, inplace=True)
    assert rotated.data_ptr() == fresh.data_ptr()
    (dx_inplace,) = torch.autograd.grad(rotated, (x,), dy)
    assert torch.equal(rotated, out) and torch.equal(dx_inplace, dx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_heads_inside_qkv(cpu_isa, dtype):
    """K of a fused QKV output (tokens, heads, 3, head_dim)[:, :, 1], rotated without a copy."""
    positions = packed_positions()
    qkv = torch.randn(positions.shape[0], 4, 3, 64).to(dtype)
    k = qkv[:, :, 1]
    out = rotate_fused(k, positions, (16, 24, 24))
    ref = apply_rope(k.double(), rope_angles(positions, (16, 24, 24), 10000.0))
    torch.testing.assert_close(out.double(), ref, **TOLERANCE[dtype])
    before = qkv.clone()
    rotate_fused(k, positions, (16, 24, 24), inplace=True)  # writes only K's elements
    torch.testing.assert_close(qkv[:, :, 1].double(), ref, **TOLERANCE[dtype])
    assert torch.equal(qkv[:, :, 0], before[:, :, 0]) and torch.equal(qkv[:, :, 2], before[:, :, 2])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_output_element_is_written_and_inverse_undoes(cpu_isa, dtype):
    C = extension()
    positions = packed_positions()
    split = (4, 6, 6)
    inv_freq = rope_inv_freq(split, 10000.0)
    x = torch.randn(positions.shape[0], 5, 16).to(dtype)
    out = poisoned(x.shape, dtype)
    C.rope_3d(x, out, positions, inv_freq, 2, 3, False)
    assert not out.isnan().any()
    back = poisoned(x.shape, dtype)
    C.rope_3d(out, back, positions, inv_freq, 2, 3, True)
    assert not back.isnan().any()
    torch.testing.assert_close(back.double(), x.double(), atol=TOLERANCE[dtype]["atol"] * 4,
                               rtol=TOLERANCE[dtype]["rtol"] * 4)


def test_rope3d_object_dispatches_and_matches_reference():
    extension()
    positions = packed_positions()
    x = torch.randn(positions.shape[0], 2, 16)
    fused = Rope3D(positions, (4, 6, 6), 10000.0, "fused")(x)
    reference = Rope3D(positions, (4, 6, 6), 10000.0, "reference")(x)
    torch.testing.assert_close(fused, reference, atol=2e-6, rtol=2e-6)
    # The reference never writes its input, whatever `inplace` says.
    assert torch.equal(Rope3D(positions, (4, 6, 6), 10000.0, "reference")(x, inplace=True),
                       reference)


def test_bad_inputs_are_refused():
    C = extension()
    positions = packed_positions()
    n = positions.shape[0]
    inv = rope_inv_freq((4, 6, 6), 10000.0)
    x = torch.randn(n, 2, 16)
    with pytest.raises(RuntimeError, match="head_dim must be even"):
        C.rope_3d(torch.randn(n, 2, 15), torch.empty(n, 2, 15), positions, inv[:7], 2, 3, False)
    with pytest.raises(RuntimeError, match="positions must be a contiguous int64"):
        C.rope_3d(x, torch.empty_like(x), positions[:-1], inv, 2, 3, False)
    with pytest.raises(RuntimeError, match="positions must be a contiguous int64"):
        C.rope_3d(x, torch.empty_like(x), positions.int(), inv, 2, 3, False)
    with pytest.raises(RuntimeError, match="inv_freq must be a contiguous float64"):
        C.rope_3d(x, torch.empty_like(x), positions, inv.float(), 2, 3, False)
    with pytest.raises(RuntimeError, match="split pairs"):
        C.rope_3d(x, torch.empty_like(x), positions, inv, 6, 3, False)
    with pytest.raises(ValueError, match="tokens, heads, head_dim"):
        rotate_fused(torch.randn(n, 16), positions, (4, 6, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_outputs_are_streamed_whole(cpu_isa, dtype):
    """An out-of-place output past STREAM_OUTPUT_BYTES is streamed in 64-byte lines."""
    C = extension()
    positions = packed_positions([(8, 16, 16)])  # 2048 tokens
    x = torch.randn(positions.shape[0], 20, 64).to(dtype)
    assert x.numel() * x.element_size() >= C.STREAM_OUTPUT_BYTES
    out = poisoned(x.shape, dtype)
    C.rope_3d(x, out, positions, rope_inv_freq((16, 24, 24), 10000.0), 8, 12, False)
    ref = apply_rope(x.double(), rope_angles(positions, (16, 24, 24), 10000.0))
    torch.testing.assert_close(out.double(), ref, **TOLERANCE[dtype])
