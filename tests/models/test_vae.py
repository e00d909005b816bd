import json

import pytest
import torch

from megagoku.config import ConfigError
from megagoku.config.schema import LatentConfig, VAEConfig
from megagoku.models.latent import build_latent_space
from megagoku.models.vae import (LOGVAR_INIT, CausalConv3d, CausalVAE, CausalVAELatent,
                                 kl_divergence, load_vae, patchify, unpatchify)

TINY = VAEConfig(latent_channels=4, base_channels=8, channel_multipliers=(1, 1, 2, 2),
                 blocks_per_level=1)
# Pixels folded 2x2 into channels: the three levels left compress 4x in space, 4x in time.
TINY_PATCH2 = VAEConfig(latent_channels=4, base_channels=8, channel_multipliers=(1, 2, 2),
                        blocks_per_level=1, patch_size=2)


@pytest.fixture(scope="module", params=[TINY, TINY_PATCH2], ids=["patch1", "patch2"])
def vae(request):
    """A VAE whose every temporal tap is random: a fresh one starts per frame (zero past taps,
    identity temporal resampling), which would let a broken causal pad or streaming tail pass."""
    torch.manual_seed(0)
    model = CausalVAE(request.param).eval()
    for module in model.modules():
        if isinstance(module, CausalConv3d):
            module.conv.reset_parameters()  # PyTorch's default init: every tap random
    return model


def clip(frames, h=32, w=32, seed=0):
    return torch.rand(3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (5, 2), (9, 3), (17, 5)])
def test_shapes_8x8_spatial_4x_temporal(vae, frames, latent_frames):
    x = clip(frames, 16, 24).unsqueeze(0)
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        assert mean.shape == logvar.shape == (1, 4, latent_frames, 2, 3)
        assert vae.decode(mean).shape == x.shape


def test_causal_first_frame_is_encoded_alone_and_prefixes_agree(vae):
    """Latent frame 0 of a clip is the latent of its first frame as an image, and the latents of
    the first 4k+1 frames are a prefix of the whole clip's."""
    x = clip(13).unsqueeze(0)
    with torch.no_grad():
        full = vae.encode(x)[0]
        torch.testing.assert_close(vae.encode(x[:, :, :1])[0], full[:, :, :1])
        torch.testing.assert_close(vae.encode(x[:, :, :5])[0], full[:, :, :2])
        decoded = vae.decode(full)
        torch.testing.assert_close(vae.decode(full[:, :, :2]), decoded[:, :, :5])


@pytest.mark.parametrize("frames", [1, 17])
def test_chunked_encode_and_decode_equal_whole_clip(vae, frames):
    x = clip(frames)
    latent_space = CausalVAELatent(vae, [0.1] * 4, [2.0] * 4, chunk_frames=4, tile_size=256,
                                   tile_overlap=64)
    with torch.no_grad():
        mean = vae.encode(x.unsqueeze(0))[0][0]
        z = latent_space.encode(x)
        torch.testing.assert_close(z, (mean - 0.1) / 2.0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(latent_space.decode(z),
                                   vae.decode(mean.unsqueeze(0))[0].clamp(-1, 1),
                                   atol=1e-5, rtol=1e-5)


def test_patchify_folds_each_pixel_square_into_channels_and_unpatchify_undoes_it():
    x = torch.arange(2 * 3 * 5 * 4 * 6, dtype=torch.float32).reshape(2, 3, 5, 4, 6)
    folded = patchify(x, 2)
    assert folded.shape == (2, 12, 5, 2, 3)
    # Channel (c, dy, dx) at square (i, j) holds pixel (2i + dy, 2j + dx) of channel c.
    for c, dy, dx, i, j in [(0, 0, 0, 0, 0), (1, 0, 1, 1, 2), (2, 1, 0, 0, 1), (2, 1, 1, 1, 0)]:
        torch.testing.assert_close(folded[:, c * 4 + dy * 2 + dx, :, i, j],
                                   x[:, c, :, 2 * i + dy, 2 * j + dx])
    assert torch.equal(unpatchify(folded, 2), x)
    assert patchify(x, 1) is x and unpatchify(x, 1) is x


def test_patch_size_and_levels_must_make_8x8():
    assert not list(TINY_PATCH2.problems())
    problems = dict(VAEConfig(patch_size=2, channel_multipliers=(1, 2, 4, 4)).problems())
    assert "needs 3 levels" in problems["channel_multipliers"]
    assert "must be 1 or 2" in dict(VAEConfig(patch_size=4).problems())["patch_size"]


def test_tiled_encode_approaches_the_whole_frame_as_tiles_overlap_more(vae):
    """Spatial tiles are an approximation near their borders (tiling.py's own tests prove the
    blend exact for tile-local functions): blending over an overlap must beat cutting, larger
    tiles beat smaller ones, and a tile as large as the frame is exact."""
    x = clip(5, 64, 96)

    def error(tile, overlap):
        space = CausalVAELatent(vae, [0.0] * 4, [1.0] * 4, tile_size=tile, tile_overlap=overlap)
        z = space.encode(x)
        assert z.shape == ref.shape and space.decode(z).shape == x.shape
        return float((z - ref).abs().mean() / ref.abs().mean())

    ref = CausalVAELatent(vae, [0.0] * 4, [1.0] * 4, tile_size=256).encode(x)
    assert error(96, 32) == 0
    assert error(48, 16) < error(48, 0)
    assert error(64, 16) < error(48, 16)
    # Each tile normalises with its own per-frame GroupNorm statistics: 0.25 measured here at
    # patch 1, 0.31 at patch 2 (a per-position norm, which the VAE had first, gave < 0.2 but
    # could not learn sparse content).
    assert error(64, 16) < (0.3 if vae.config.patch_size == 1 else 0.35)


def test_a_fresh_vae_starts_per_frame():
    """Latent frame k of a fresh VAE is frame 4k's own encoding (the frames between are learnt to
    matter), each decoded frame is the decoding of one latent frame, and the posterior is narrow."""
    torch.manual_seed(0)
    fresh = CausalVAE(TINY).eval()
    x = clip(9).unsqueeze(0)
    changed = x.clone()
    changed[:, :, [1, 2, 3, 5, 6, 7]] = clip(6, seed=1)
    with torch.no_grad():
        mean, logvar = fresh.encode(x)
        # A narrow posterior: its noise must not drown what distinguishes clips at the start.
        assert torch.equal(logvar, torch.full_like(logvar, LOGVAR_INIT))
        torch.testing.assert_close(fresh.encode(changed)[0], mean)
        for k in range(3):
            torch.testing.assert_close(fresh.encode(x[:, :, 4 * k:4 * k + 1])[0],
                                       mean[:, :, k:k + 1], atol=1e-5, rtol=1e-5)
        decoded = fresh.decode(mean)
        torch.testing.assert_close(decoded[:, :, 1:5], decoded[:, :, 1:2].expand(-1, -1, 4, -1, -1))


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    zero = torch.zeros(2, 4, 1, 2, 2)
    assert kl_divergence(zero, zero) == 0
    assert kl_divergence(zero + 1, zero) > 0 and kl_divergence(zero, zero - 1) > 0


def test_bad_sizes_are_refused_with_the_reason(vae):
    latent_space = CausalVAELatent(vae, [0.0] * 4, [1.0] * 4)
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        latent_space.encode(clip(4))
    with pytest.raises(ValueError, match="not divisible by the VAE's 8x8"):
        latent_space.encode(clip(5, 12, 16))
    with pytest.raises(ValueError, match="expected a latent \\(4, T, H, W\\)"):
        latent_space.decode(torch.zeros(3, 1, 2, 2))


def test_saved_vae_loads_as_the_latent_space_of_a_config(vae, tmp_path):
    vae.save(tmp_path / "vae", [0.5, 0.0, 0.0, -0.5], [1.0, 2.0, 3.0, 4.0])
    space = build_latent_space(LatentConfig(kind="causal_vae", channels=4,
                                            path=str(tmp_path / "vae")))
    x = clip(5)
    direct = CausalVAELatent(vae, [0.5, 0.0, 0.0, -0.5], [1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(space.encode(x), direct.encode(x))
    with pytest.raises(ValueError, match="latent.channels: 16 differs from the 4 channels"):
        build_latent_space(LatentConfig(kind="causal_vae", channels=16, path=str(tmp_path / "vae")))


def test_broken_vae_folders_are_one_line_errors(vae, tmp_path):
    with pytest.raises(FileNotFoundError, match="latent.path: .* is not a causal VAE folder"):
        load_vae(tmp_path)
    vae.save(tmp_path, [0.0] * 4, [1.0] * 4)
    meta = json.loads((tmp_path / "vae.json").read_text())
    meta["latents_std"] = [1.0, 0.0, 1.0, 1.0]
    (tmp_path / "vae.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="vae.json: latents_mean/latents_std need 4"):
        load_vae(tmp_path)
    meta["config"]["blocks_per_level"] = 0
    (tmp_path / "vae.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="vae.json: config: blocks_per_level: must be positive"):
        load_vae(tmp_path)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a CPU build without oneDNN")
def test_one_clip_without_autograd_takes_onednn_and_matches_the_batched_path(monkeypatch):
    """Batch-1 inference on a CPU goes to oneDNN directly (PyTorch's own dispatch takes a slow
    reference kernel there); it must give what the ordinary path gives in a batch."""
    calls = []
    onednn = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution",
                        lambda *args: calls.append(1) or onednn(*args))
    torch.manual_seed(0)
    model = CausalVAE(TINY).eval()
    x = torch.stack([clip(9), clip(9, seed=1)])
    with torch.no_grad():
        batched_mean = model.encode(x)[0]
        batched_out = model.decode(batched_mean)
        for i in range(2):
            mean = model.encode(x[i:i + 1])[0]
            torch.testing.assert_close(mean, batched_mean[i:i + 1], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(model.decode(mean), batched_out[i:i + 1], atol=1e-5,
                                       rtol=1e-4)
    assert calls  # the single clips went through oneDNN
    calls.clear()
    # With autograd the ordinary path runs, and gradients flow.
    model.decode(model.encode(x[:1])[0]).sum().backward()
    assert model.encoder.layers[0].conv.weight.grad is not None and not calls
