"""Frame embedders: the thumbnail default's similarity behaviour, and DINOv2 / CLIP embedders
loaded from tiny random checkpoints saved to a temporary folder."""

import json

import numpy as np
import pytest
import torch

from megagoku.curation.features import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD,
                                        ClipEmbedder, Dinov2Embedder, ThumbnailEmbedder,
                                        adjacent_similarity, build_embedder)


def scene_a(h=72, w=96):
    """Warm horizontal gradient with a dark block on the left; values stay <= 220."""
    y, x = np.mgrid[0:h, 0:w]
    frame = np.stack([60 + 150 * x / w, 40 + 100 * y / h, 30 + 0 * x], axis=-1)
    frame[10:40, 8:30] = (20, 20, 60)
    return frame.astype(np.uint8)


def scene_b(h=72, w=96):
    """Cool vertical gradient with a bright disc on the right: a different layout and palette."""
    y, x = np.mgrid[0:h, 0:w]
    frame = np.stack([30 + 0 * x, 200 - 150 * y / h, 220 - 60 * x / w], axis=-1)
    frame[(y - 40) ** 2 + (x - 70) ** 2 < 15 ** 2] = (250, 240, 200)
    return frame.astype(np.uint8)


def sim(embedder, f1, f2):
    return float(adjacent_similarity(embedder.embed(np.stack([f1, f2])))[0])


# --- thumbnail -----------------------------------------------------------------------------------

def test_thumbnail_rows_are_unit_float32():
    emb = ThumbnailEmbedder(size=16).embed(np.stack([scene_a(), scene_b(), scene_a()]))
    assert emb.shape == (3, 768) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    one = ThumbnailEmbedder(size=8).embed(scene_a())
    assert one.shape == (1, 192)


def test_thumbnail_ignores_brightness_but_not_scene():
    e = ThumbnailEmbedder()
    a, b = scene_a(), scene_b()
    brighter = (a.astype(np.int16) + 20).astype(np.uint8)  # scene_a stays <= 220: no clipping
    assert sim(e, a, brighter) > 0.99
    assert sim(e, a, b) < 0.5


def test_thumbnail_crossfade_lies_between():
    e = ThumbnailEmbedder()
    a, b = scene_a(), scene_b()
    mix = ((a.astype(np.float32) + b.astype(np.float32)) / 2).round().astype(np.uint8)
    s_ab, s_amix = sim(e, a, b), sim(e, a, mix)
    assert s_ab + 0.2 < s_amix < 0.99
    assert s_ab + 0.2 < sim(e, b, mix) < 0.99


def test_thumbnail_flat_frames():
    e = ThumbnailEmbedder()
    black = np.zeros((40, 50, 3), np.uint8)
    grey = np.full((40, 50, 3), 128, np.uint8)
    emb = e.embed(np.stack([black, grey, scene_a(40, 50)]))
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    sims = adjacent_similarity(emb)
    assert sims[0] == pytest.approx(1.0, abs=1e-6)  # no cut inside a run of flat frames
    assert sims[1] == pytest.approx(0.0, abs=1e-6)  # flat -> picture is a cut


def test_bad_frames_raise():
    e = ThumbnailEmbedder()
    with pytest.raises(ValueError, match="uint8"):
        e.embed(scene_a().astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        e.embed(np.zeros((2, 8, 8, 4), np.uint8))


def test_adjacent_similarity_is_cosine_of_consecutive_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    want = [x[i] @ x[i + 1] / np.linalg.norm(x[i]) / np.linalg.norm(x[i + 1]) for i in range(4)]
    got = adjacent_similarity(x)
    assert got.shape == (4,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert adjacent_similarity(x[:1]).shape == (0,)
    assert adjacent_similarity(np.zeros((2, 3)))[0] == 0.0
    with pytest.raises(ValueError):
        adjacent_similarity(np.zeros(3))


# --- Hugging Face models -------------------------------------------------------------------------

def random_frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def by_hand(frames, mean, std):
    x = (frames.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_dinov2_embeds_cls_token(dino_dir):
    e = Dinov2Embedder(dino_dir, batch_size=2)
    assert e.processor is None and e.dim == 32
    frames = random_frames(3, 224, 224)
    frames = np.concatenate([frames, frames[:1]])  # the last frame repeats the first
    emb = e.embed(frames)
    assert emb.shape == (4, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert float(emb[0] @ emb[3]) == pytest.approx(1.0, abs=1e-5)
    assert float(emb[0] @ emb[1]) < 0.9999  # not a constant map
    # Fallback preprocessing of a 224 frame is plain ImageNet normalisation; the embedding is
    # the CLS token of the last hidden state.
    with torch.no_grad():
        hidden = e.model(pixel_values=by_hand(frames, IMAGENET_MEAN, IMAGENET_STD))
    want = torch.nn.functional.normalize(hidden.last_hidden_state[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(emb, want, atol=1e-5)
    # Batch boundaries (2 + 2) change nothing.
    np.testing.assert_allclose(Dinov2Embedder(dino_dir, batch_size=16).embed(frames), emb,
                               atol=1e-5)


def test_dinov2_fallback_resizes_and_crops(dino_dir):
    e = Dinov2Embedder(dino_dir)
    pixels = e.preprocess(random_frames(2, 90, 160))  # 16:9: shortest edge 224, centre crop
    assert tuple(pixels.shape) == (2, 3, 224, 224) and pixels.dtype == torch.float32
    assert e.embed(random_frames(2, 90, 160)).shape == (2, 32)


def test_dinov2_uses_the_folders_image_processor(dino_dir, tmp_path):
    import shutil

    from transformers import BitImageProcessor

    folder = tmp_path / "with-processor"
    shutil.copytree(dino_dir, folder)
    BitImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                      do_convert_rgb=False).save_pretrained(folder)
    with_proc = Dinov2Embedder(folder)
    assert with_proc.processor is not None
    frames = random_frames(2, 224, 224, seed=3)
    # Same settings as the fallback: the processor's output must agree with it.
    np.testing.assert_allclose(with_proc.preprocess(frames).numpy(),
                               Dinov2Embedder(dino_dir).preprocess(frames).numpy(), atol=1e-5)


def test_clip_returns_normalised_projection(clip_dir):
    e = ClipEmbedder(clip_dir)
    assert e.dim == 16
    frames = random_frames(3, 32, 32, seed=1)
    emb = e.embed(frames)
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        proj = e.model(pixel_values=by_hand(frames, CLIP_MEAN, CLIP_STD)).image_embeds
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(proj, dim=-1).numpy(),
                               atol=1e-5)
    # Fallback size follows the config's image_size (32 here), not a fixed 224.
    assert tuple(e.preprocess(random_frames(1, 48, 64)).shape) == (1, 3, 32, 32)


def test_clip_loads_a_full_clip_checkpoint(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    full.save_pretrained(tmp_path)
    frames = random_frames(2, 32, 32, seed=5)
    emb = ClipEmbedder(tmp_path).embed(frames)
    with torch.no_grad():
        feats = full.get_image_features(pixel_values=by_hand(frames, CLIP_MEAN, CLIP_STD))
    feats = getattr(feats, "pooler_output", feats)
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(feats, dim=-1).numpy(),
                               atol=1e-5)


def test_bad_model_directories_raise(tmp_path, clip_dir):
    empty = tmp_path / "no-config"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json") as err:
        Dinov2Embedder(empty)
    assert str(empty) in str(err.value)
    with pytest.raises(ValueError, match="not a directory"):
        ClipEmbedder(tmp_path / "missing")
    with pytest.raises(ValueError, match="model_type 'clip_vision_model'"):
        Dinov2Embedder(clip_dir)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((clip_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="cannot load") as err:
        ClipEmbedder(no_weights)
    assert str(no_weights) in str(err.value)
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        ClipEmbedder(bad_json)
    assert json.loads((clip_dir / "config.json").read_text())  # fixture untouched


def test_checkpoint_missing_weights_is_refused(dino_dir, tmp_path):
    # transformers would fill the gap with random weights and only log it.
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(dino_dir, folder)
    state = load_file(folder / "model.safetensors")
    del state["layernorm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing.*layernorm.weight") as err:
        Dinov2Embedder(folder)
    assert str(folder) in str(err.value)
    # The mask token is only used in masked-image training: a checkpoint without it is fine.
    state = load_file(dino_dir / "model.safetensors")
    del state["embeddings.mask_token"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    assert Dinov2Embedder(folder).embed(random_frames(1, 56, 56)).shape == (1, 32)


def test_build_embedder(dino_dir):
    assert isinstance(build_embedder("thumbnail", None), ThumbnailEmbedder)
    assert isinstance(build_embedder("dinov2", str(dino_dir)), Dinov2Embedder)
    for kind in ("dinov2", "clip"):
        with pytest.raises(ValueError, match="features.model_dir: .*needs a local model"):
            build_embedder(kind, None)
    with pytest.raises(ValueError, match="features.kind"):
        build_embedder("siglip", "x")
