"""DiffusersVAE on tiny randomly initialised AutoencoderKLWan / AutoencoderKLCogVideoX saved to a
temporary directory (nothing is downloaded): shapes, the latent normalisation of each pipeline,
the decode inverse, determinism and the errors."""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from megagoku.models.diffusers_vae import DiffusersVAE  # noqa: E402

# Non-trivial normalisation constants, so that a missing or inverted normalisation fails.
WAN_MEAN = [0.5, -1.0, 2.0, 0.1]
WAN_STD = [2.0, 0.5, 3.0, 1.5]
COG_SCALING = 0.37


def tiny_wan(**overrides):
    # Four dim_mult levels = three 2x spatial downsamples (8x8); two temporal downsamples (4x).
    kwargs = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                  temperal_downsample=[False, True, True], latents_mean=WAN_MEAN,
                  latents_std=WAN_STD)
    return diffusers.AutoencoderKLWan(**(kwargs | overrides)).eval()


def tiny_cogvideox():
    # Four blocks = three 2x spatial downsamples (8x8); norm groups divide every width.
    return diffusers.AutoencoderKLCogVideoX(block_out_channels=(8, 8, 16, 16), latent_channels=4,
                                            layers_per_block=1, norm_num_groups=4,
                                            scaling_factor=COG_SCALING).eval()


@pytest.fixture(scope="module", params=["wan", "cogvideox"])
def saved(request, tmp_path_factory):
    """(the reference diffusers model, a DiffusersVAE loaded from its save_pretrained dir)."""
    torch.manual_seed(0)
    model = tiny_wan() if request.param == "wan" else tiny_cogvideox()
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return model, DiffusersVAE(str(path))


def video(frames, height=16, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, frames, height, width, generator=g) * 2 - 1


def normalise_by_hand(model, z):
    if isinstance(model, diffusers.AutoencoderKLWan):
        mean = torch.tensor(WAN_MEAN).view(-1, 1, 1, 1)
        std = torch.tensor(WAN_STD).view(-1, 1, 1, 1)
        return (z - mean) / std
    return z * COG_SCALING


def denormalise_by_hand(model, latent):
    if isinstance(model, diffusers.AutoencoderKLWan):
        mean = torch.tensor(WAN_MEAN).view(-1, 1, 1, 1)
        std = torch.tensor(WAN_STD).view(-1, 1, 1, 1)
        return latent * std + mean
    return latent / COG_SCALING


def test_attributes_come_from_the_config(saved):
    _, vae = saved
    assert (vae.channels, vae.temporal_compression, vae.spatial_compression) == (4, 4, 8)


@pytest.mark.parametrize("frames", [1, 5, 9])
@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
def test_latent_shape_matches_encode(saved, frames, size):
    _, vae = saved
    latent = vae.encode(video(frames, *size))
    expected = (4, 1 + (frames - 1) // 4, size[0] // 8, size[1] // 8)
    assert vae.latent_shape(frames, *size) == expected
    assert tuple(latent.shape) == expected
    assert latent.dtype == torch.float32


@pytest.mark.parametrize("frames", [1, 5])
def test_encode_is_the_normalised_posterior_mean(saved, frames):
    model, vae = saved
    x = video(frames)
    with torch.no_grad():
        mean = model.encode(x[None]).latent_dist.mode()[0]
    latent = vae.encode(x)
    torch.testing.assert_close(latent, normalise_by_hand(model, mean))
    # The normalisation is not a no-op here, so the check above tests it.
    assert not torch.allclose(latent, mean, atol=1e-3)


def test_encode_is_deterministic(saved):
    _, vae = saved
    x = video(5)
    assert torch.equal(vae.encode(x), vae.encode(x))


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_decode_round_trip_shape_and_range(saved, frames):
    _, vae = saved
    x = video(frames, 16, 24)
    y = vae.decode(vae.encode(x))
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert y.min() >= -1.0 and y.max() <= 1.0


# Latent frame counts 1 and 3: both VAEs decode these with a plain model.decode (see the
# CogVideoX test below for even counts).
@pytest.mark.parametrize("frames", [1, 9])
def test_decode_inverts_the_normalisation(saved, frames):
    model, vae = saved
    latent = vae.encode(video(frames))
    with torch.no_grad():
        expected = model.decode(denormalise_by_hand(model, latent)[None]).sample[0]
    torch.testing.assert_close(vae.decode(latent), expected.clamp(-1, 1))


@pytest.mark.parametrize("frames", [5, 13])
def test_cogvideox_even_latent_frame_counts_decode_to_4k_plus_1_frames(tmp_path, frames):
    # CogVideoX's decoder turns an even number of latent frames into 4 frames each (2 -> 8, not
    # 5); DiffusersVAE decodes frame 0 from the first latent alone and takes 4 frames per later one.
    torch.manual_seed(0)
    model = tiny_cogvideox()
    model.save_pretrained(tmp_path)
    vae = DiffusersVAE(str(tmp_path))
    latent = vae.encode(video(frames))
    assert latent.shape[1] % 2 == 0
    z = denormalise_by_hand(model, latent)[None]
    with torch.no_grad():
        assert model.decode(z).sample.shape[2] == 4 * latent.shape[1]  # what diffusers does
        first = model.decode(z[:, :, :1]).sample[0]
        later = model.decode(z).sample[0, :, 4:]
    decoded = vae.decode(latent)
    assert decoded.shape == (3, frames, 16, 16)
    torch.testing.assert_close(decoded, torch.cat([first, later], dim=1).clamp(-1, 1))


def test_wan_decodes_two_latent_frames_with_a_plain_decode(tmp_path):
    torch.manual_seed(0)
    model = tiny_wan()
    model.save_pretrained(tmp_path)
    vae = DiffusersVAE(str(tmp_path))
    latent = vae.encode(video(5))
    with torch.no_grad():
        expected = model.decode(denormalise_by_hand(model, latent)[None]).sample[0]
    torch.testing.assert_close(vae.decode(latent), expected.clamp(-1, 1))


@pytest.mark.parametrize("frames, size, message", [
    (4, (16, 16), "4k\\+1 frames"),
    (0, (16, 16), "4k\\+1 frames"),
    (5, (12, 12), "not divisible"),
    (5, (16, 20), "not divisible"),
])
def test_bad_video_shapes_are_rejected(saved, frames, size, message):
    _, vae = saved
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(3, frames, *size))
    with pytest.raises(ValueError, match=message):
        vae.latent_shape(frames, *size)


def test_not_a_video_is_rejected(saved):
    _, vae = saved
    with pytest.raises(ValueError, match=r"\(3, T, H, W\)"):
        vae.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match="expected a latent"):
        vae.decode(torch.zeros(3, 2, 2, 2))


def test_unsupported_class_name_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="config.json.*_class_name 'AutoencoderKL'") as info:
        DiffusersVAE(str(tmp_path))
    assert "AutoencoderKLWan" in str(info.value) and "AutoencoderKLCogVideoX" in str(info.value)


def test_missing_directory_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="latent.path"):
        DiffusersVAE(str(tmp_path / "nowhere"))


def test_pipeline_checkout_gets_a_hint(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(FileNotFoundError, match="latent.path.*use .*vae"):
        DiffusersVAE(str(tmp_path))


def test_other_compressions_are_rejected(tmp_path):
    # e.g. the Wan 2.2 VAE compresses 16x16 spatially; megagoku plans for 8x8.
    tiny_wan(scale_factor_spatial=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="16x16 spatially"):
        DiffusersVAE(str(tmp_path))


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_tiles_follow_latent_tile_size_and_overlap(tmp_path, kind):
    torch.manual_seed(0)
    (tiny_wan() if kind == "wan" else tiny_cogvideox()).save_pretrained(tmp_path)
    whole = DiffusersVAE(str(tmp_path))
    assert not whole.model.use_tiling
    vae = DiffusersVAE(str(tmp_path), tiles=(16, 8))
    model = vae.model
    assert model.use_tiling and model.tile_sample_min_height == model.tile_sample_min_width == 16
    if kind == "wan":
        assert model.tile_sample_stride_height == model.tile_sample_stride_width == 8
    else:
        assert model.tile_overlap_factor_height == model.tile_overlap_factor_width == 0.5
    # A 32x32 clip is larger than a tile: the tiled encode is really tiled (differs from the whole
    # clip's) yet stays the same shape and close to it.
    clip = video(5, 32, 32)
    tiled, plain = vae.encode(clip), whole.encode(clip)
    assert tiled.shape == plain.shape and not torch.equal(tiled, plain)
    assert vae.to("cpu") is vae
    # No overlap is kept as 0, not replaced by the class default.
    flush = DiffusersVAE(str(tmp_path), tiles=(16, 0)).model
    if kind == "wan":
        assert flush.tile_sample_stride_height == 16
    else:
        assert flush.tile_overlap_factor_height == 0.0
