import torch

from megagoku.ops import rms_norm_reference, whole_width_rms_norm_reference


def test_reference_rms_norm_matches_definition_and_keeps_dtype():
    x = torch.randn(6, 10, dtype=torch.float64) * 3
    w = torch.randn(10, dtype=torch.float64)
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(rms_norm_reference(x, w, 1e-6), expected)
    y = rms_norm_reference(x.to(torch.bfloat16), None, 1e-6)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double().pow(2).mean(-1), torch.ones(6, dtype=torch.float64),
                               atol=2e-2, rtol=0)


def test_reference_is_one_rms_norm_over_all_heads():
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    w = torch.randn(12, dtype=torch.float64)
    flat = x.reshape(5, 12)
    expected = flat / torch.sqrt(flat.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(whole_width_rms_norm_reference(x, w, 1e-6), expected.view(5, 3, 4))
