import pytest
import torch

from megagoku.data.packing import pack
from megagoku.models import build_model
from tests.conftest import randomize, small_model_config

GRIDS = [(2, 4, 6), (1, 6, 4), (3, 2, 4)]  # latent (T, H, W): a video, an image, a video
TEXT_LENS = [3, 5, 2]


def make_inputs(seed=0, text_dim=24):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(3, *grid, generator=g) for grid in GRIDS]
    batch = pack(latents, ["a", "b", "c"], ["video", "image", "video"], (1, 2, 2))
    texts = [torch.randn(n, text_dim, generator=g) for n in TEXT_LENS]
    timesteps = torch.rand(len(GRIDS), generator=g)
    return batch, texts, timesteps


def run_packed(model, batch, texts, timesteps):
    text_cu = torch.tensor([0] + TEXT_LENS).cumsum(0).to(torch.int32)
    return model(batch.tokens, timesteps, batch.positions, batch.cu_seqlens,
                 torch.cat(texts), text_cu)


def run_alone(model, batch, texts, timesteps, i):
    tokens = batch.split(batch.tokens)[i]
    positions = batch.split(batch.positions)[i]
    cu = torch.tensor([0, tokens.shape[0]], dtype=torch.int32)
    text_cu = torch.tensor([0, texts[i].shape[0]], dtype=torch.int32)
    return model(tokens, timesteps[i:i + 1], positions, cu, texts[i], text_cu)


@pytest.mark.parametrize("backend", ["sdpa_segments", "sdpa_padded", "sdpa_blockmask"])
def test_packed_forward_equals_each_sample_alone(backend):
    torch.manual_seed(0)
    model = randomize(build_model(small_model_config(attention_backend=backend))).eval()
    batch, texts, timesteps = make_inputs()
    packed = batch.split(run_packed(model, batch, texts, timesteps))
    for i in range(len(GRIDS)):
        alone = run_alone(model, batch, texts, timesteps, i)
        torch.testing.assert_close(packed[i], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa_segments", "sdpa_padded", "sdpa_blockmask"])
def test_no_leakage_across_samples_in_self_or_cross_attention(backend):
    model = randomize(build_model(small_model_config(attention_backend=backend))).eval()
    batch, texts, timesteps = make_inputs()
    base = batch.split(run_packed(model, batch, texts, timesteps))

    # Another caption for sample 1 only: only sample 1's output may change.
    texts2 = list(texts)
    texts2[1] = texts[1] + 1.0
    out = batch.split(run_packed(model, batch, texts2, timesteps))
    torch.testing.assert_close(out[0], base[0])
    torch.testing.assert_close(out[2], base[2])
    assert (out[1] - base[1]).abs().max() > 1e-3

    # Other tokens for sample 0 only: samples 1 and 2 must not see it.
    tokens = batch.tokens.clone()
    tokens[: batch.cu_seqlens[1]] += 1.0
    batch.tokens = tokens
    out = batch.split(run_packed(model, batch, texts, timesteps))
    torch.testing.assert_close(out[1], base[1])
    torch.testing.assert_close(out[2], base[2])
    assert (out[0] - base[0]).abs().max() > 1e-3


def test_gradients_reach_every_parameter():
    model = randomize(build_model(small_model_config()))
    batch, texts, timesteps = make_inputs()
    run_packed(model, batch, texts, timesteps).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_zero_initialised_model_outputs_zero_and_trains_its_output_layer():
    """adaLN-Zero: a fresh model predicts 0, and the first gradients reach the output layer."""
    model = build_model(small_model_config())
    batch, texts, timesteps = make_inputs()
    out = run_packed(model, batch, texts, timesteps)
    assert out.abs().max() == 0
    (out - 1).pow(2).mean().backward()
    assert model.final.linear.bias.grad.abs().sum() > 0


def test_timestep_changes_output():
    model = randomize(build_model(small_model_config())).eval()
    batch, texts, timesteps = make_inputs()
    a = run_packed(model, batch, texts, timesteps)
    b = run_packed(model, batch, texts, timesteps.flip(0))
    assert (a - b).abs().max() > 1e-3


def test_weights_round_trip_and_reject_foreign_weights():
    model = randomize(build_model(small_model_config()))
    other = build_model(small_model_config())
    other.load_weights(model.weights())
    batch, texts, timesteps = make_inputs()
    torch.testing.assert_close(run_packed(other, batch, texts, timesteps),
                               run_packed(model, batch, texts, timesteps))
    bigger = build_model(small_model_config(depth=3))
    with pytest.raises(KeyError, match="missing"):
        bigger.load_weights(model.weights())


def test_meta_device_build_allocates_nothing():
    model = build_model(small_model_config(depth=40, hidden_size=3072, num_heads=48,
                                           rope_split=(16, 24, 24)), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_fused_kernels_and_reference_give_the_same_model():
    """model.kernels switches every RMSNorm and RoPE of the model between the csrc/ kernels and
    the PyTorch reference; outputs and all gradients agree."""
    batch, texts, timesteps = make_inputs()
    results = []
    for kernels in ("fused", "reference"):
        torch.manual_seed(0)
        model = randomize(build_model(small_model_config(kernels=kernels)))
        out = run_packed(model, batch, texts, timesteps)
        out.square().mean().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (fused_out, fused_grads), (ref_out, ref_grads) = results
    torch.testing.assert_close(fused_out, ref_out, atol=1e-5, rtol=1e-5)
    assert fused_grads.keys() == ref_grads.keys()
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
