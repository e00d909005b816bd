import torch

from megagoku.ops import rms_norm_reference


def test_reference_rms_norm_matches_definition_and_keeps_dtype():
    x = torch.randn(6, 10, dtype=torch.float64) * 3
    w = torch.randn(10, dtype=torch.float64)
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(rms_norm_reference(x, w, 1e-6), expected)
    y = rms_norm_reference(x.to(torch.bfloat16), None, 1e-6)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double().pow(2).mean(-1), torch.ones(6, dtype=torch.float64),
                               atol=2e-2, rtol=0)
