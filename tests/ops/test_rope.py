import torch

from megagoku.ops import apply_rope, rope_angles

SPLIT = (4, 6, 6)


def rotated_dot(q, k, pos_q, pos_k):
    qa = apply_rope(q, rope_angles(pos_q, SPLIT, 10000.0))
    ka = apply_rope(k, rope_angles(pos_k, SPLIT, 10000.0))
    return (qa * ka).sum(-1)


def test_dot_product_depends_only_on_position_difference():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 3, 16, generator=g, dtype=torch.float64)
    k = torch.randn(5, 3, 16, generator=g, dtype=torch.float64)
    pos_q = torch.randint(0, 20, (5, 3), generator=g)
    pos_k = torch.randint(0, 20, (5, 3), generator=g)
    base = rotated_dot(q, k, pos_q, pos_k)
    for shift in ([1, 0, 0], [0, 3, 0], [0, 0, 7], [5, 2, 9]):
        shifted = rotated_dot(q, k, pos_q + torch.tensor(shift), pos_k + torch.tensor(shift))
        torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)
    # ... and does depend on the difference, along every axis.
    for axis in range(3):
        moved = pos_k.clone()
        moved[:, axis] += 1
        assert (rotated_dot(q, k, pos_q, moved) - base).abs().max() > 1e-3


def test_each_axis_rotates_only_its_own_channels():
    x = torch.randn(1, 1, 16)
    origin = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(apply_rope(x, rope_angles(origin, SPLIT, 10000.0)), x)
    for axis, (lo, hi) in enumerate([(0, 4), (4, 10), (10, 16)]):
        pos = origin.clone()
        pos[0, axis] = 3
        out = apply_rope(x, rope_angles(pos, SPLIT, 10000.0))
        changed = (out - x).abs()[0, 0] > 1e-6
        assert changed[lo:hi].all() and not changed[:lo].any() and not changed[hi:].any()


def test_rotation_preserves_norm():
    x = torch.randn(7, 2, 16, dtype=torch.float64)
    pos = torch.randint(0, 50, (7, 3))
    out = apply_rope(x, rope_angles(pos, SPLIT, 10000.0))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
