import pytest
import torch
import torch.nn.functional as F

from megagoku.models.tiling import tile_starts, tiled


def test_tile_starts_cover_the_axis_with_the_last_flush():
    assert tile_starts(64, 64, 16) == [0]
    assert tile_starts(100, 48, 16) == [0, 32, 52]
    for size, tile, overlap in [(720, 256, 64), (1280, 256, 64), (264, 256, 64)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("scale", [1 / 8, 8])
def test_a_function_local_to_its_tile_gives_exactly_the_untiled_result(scale):
    """Weights are a partition of unity: blending equal values returns them unchanged. Average
    pooling by 8 (encoder-like) and nearest upsampling by 8 (decoder-like) only look inside
    their tile."""
    if scale < 1:
        fn = lambda x: F.avg_pool3d(x, (1, 8, 8))  # noqa: E731
        x = torch.randn(1, 3, 2, 72, 104)
        tile, overlap = 32, 16
    else:
        fn = lambda x: F.interpolate(x, scale_factor=(1, 8, 8))  # noqa: E731
        x = torch.randn(1, 3, 2, 9, 13)
        tile, overlap = 4, 2
    torch.testing.assert_close(tiled(fn, x, tile, overlap, scale), fn(x))


def test_blending_hides_a_per_tile_offset_seam():
    """A function that adds a different constant per tile: the blend must ramp between them
    (no jump larger than one ramp step) instead of cutting."""
    calls = iter(range(100))
    fn = lambda x: x * 0 + float(next(calls))  # noqa: E731
    out = tiled(fn, torch.zeros(1, 1, 1, 8, 40), 16, 4, 1.0)[0, 0, 0, 0]  # tiles at 0, 12, 24
    steps = out[1:] - out[:-1]
    assert out[0] == 0 and out[-1] == 2
    assert steps.min() >= 0 and steps.max() <= 1 / 5 + 1e-6  # ramps over 4 pixels
