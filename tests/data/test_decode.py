"""Decoding files into samples: DALI for what it decodes on the CPU (VP9), PyAV for the rest
(H.264), Pillow for images; both video decoders agree on one file; frame sampling, resizing and
cropping; bad files skipped with one warning each and counted."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from megagoku.config.schema import DataConfig
from megagoku.data.decode import (DaliDecoder, DecodeError, MediaReader, Target, choose_backend,
                                  decode_pyav, frame_indices, probe, to_pixels)
from megagoku.data.manifest import load_manifest
from megagoku.data.shapes import ShapesDataset
from megagoku.data.shapes_files import write_shapes_files

CFG = DataConfig(height=16, width=16, frames=9, image_fraction=0.25, seed=3)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_files(out, CFG, 8, fps=8)
    return out


def test_built_in_files_decode_back_to_the_rendered_samples(shapes_dir):
    records = load_manifest(shapes_dir / "manifest.jsonl")
    suffixes = {r.path.suffix for r in records}
    assert suffixes == {".webm", ".mp4", ".png"}, suffixes
    reader = MediaReader()
    dataset = ShapesDataset(CFG)
    for index, record in enumerate(records):
        pixels = reader.read(record.path, record.kind, Target(16, 16, record.frames))
        expected = dataset[index].pixels
        assert pixels.shape == expected.shape == (3, record.frames, 16, 16)
        # Codec tolerance: 4:2:0 chroma smears the edges of saturated shapes; the mean stays small.
        assert (pixels - expected).abs().mean() < 0.05, record.path.name
    clips = sum(r.kind == "video" for r in records)
    assert reader.stats.decoded == {"dali": sum(r.path.suffix == ".webm" for r in records),
                                    "pyav": sum(r.path.suffix == ".mp4" for r in records),
                                    "pillow": len(records) - clips}
    assert reader.stats.as_metrics()["data/skipped"] == 0


def test_dali_and_pyav_agree_on_the_same_file(shapes_dir):
    clip = next((shapes_dir / "clips").glob("*.webm"))
    assert probe(clip).codec == "vp9" and choose_backend("vp9") == "dali"
    assert choose_backend("h264") == "pyav" and choose_backend("h264", "cuda") == "dali"
    dali = DaliDecoder()(clip).astype(np.int16)
    pyav = decode_pyav(clip).astype(np.int16)
    assert dali.shape == pyav.shape == (9, 16, 16, 3)
    assert np.abs(dali - pyav).mean() < 3.0  # levels of 255: their YUV->RGB differ at edges


def test_frame_sampling_follows_the_target_rate(shapes_dir):
    clip = next((shapes_dir / "clips").glob("*.mp4"))
    frames = decode_pyav(clip)
    assert list(frame_indices(clip, 9, 8.0, Target(16, 16, 5, fps=4.0))) == [0, 2, 4, 6, 8]
    assert list(frame_indices(clip, 9, 8.0, Target(16, 16, 9))) == list(range(9))
    reader = MediaReader()
    half = reader.read(clip, "video", Target(16, 16, 5, fps=4.0))
    torch.testing.assert_close(half, to_pixels(frames[::2], Target(16, 16, 5)))
    with pytest.raises(DecodeError, match=r"has 9 frames, the sample needs 17 \(9 at 4 fps\)"):
        frame_indices(clip, 9, 8.0, Target(16, 16, 9, fps=4.0))


def test_resize_covers_then_centre_crops():
    frame = np.zeros((1, 32, 64, 3), dtype=np.uint8)
    frame[:, :, 16:48] = 255  # white middle half, black sides
    pixels = to_pixels(frame, Target(16, 16))
    assert pixels.shape == (3, 1, 16, 16)
    # Resized to 16x32, the centre crop keeps the white middle (antialiasing greys its border).
    assert pixels[..., 1:-1].min() > 0.99 and pixels.min() > 0.5
    assert to_pixels(frame, Target(8, 32)).shape == (3, 1, 8, 32)


def test_bad_files_are_skipped_with_a_warning_and_counted(shapes_dir, tmp_path, caplog):
    webm = next((shapes_dir / "clips").glob("*.webm"))
    mp4 = next((shapes_dir / "clips").glob("*.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "cut.webm").write_bytes(webm.read_bytes()[:200])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not an image")
    reader = MediaReader()
    target = Target(16, 16, 9)
    with caplog.at_level(logging.WARNING, logger="megagoku.data.decode"):
        results = [reader.read(tmp_path / "absent.webm", "video", target),
                   reader.read(tmp_path / "empty.mp4", "video", target),
                   reader.read(tmp_path / "noise.mp4", "video", target),
                   reader.read(tmp_path / "cut.webm", "video", target),
                   reader.read(tmp_path / "broken.png", "image", Target(16, 16)),
                   reader.read(mp4, "video", Target(16, 16, 12))]  # the sample needs more
    assert results == [None] * 6
    assert sum(reader.stats.skipped.values()) == 6
    assert reader.stats.skipped["missing"] == 1 and reader.stats.skipped["empty"] == 1
    assert reader.stats.skipped["bad_image"] == 1 and reader.stats.skipped["too_short"] == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6 and all(line.startswith("skipping ") for line in lines)
    assert any("absent.webm: no such file" in line for line in lines)
    assert reader.stats.as_metrics()["data/skipped"] == 6


def test_dali_decoder_says_why_and_recovers_after_a_failed_file(shapes_dir, tmp_path):
    webm = next((shapes_dir / "clips").glob("*.webm"))
    (tmp_path / "cut.webm").write_bytes(webm.read_bytes()[:200])
    decoder = DaliDecoder()
    with pytest.raises(DecodeError) as e:
        decoder(tmp_path / "cut.webm")
    assert e.value.reason == "undecodable" and "DALI could not decode it (" in str(e.value)
    assert "fn.decoders.video" not in str(e.value) and "\n" not in str(e.value)
    assert decoder(webm).shape == (9, 16, 16, 3)  # the failed run's pipeline was rebuilt


def test_dali_refuses_h264_on_the_cpu_with_a_clear_reason(shapes_dir):
    mp4 = next((shapes_dir / "clips").glob("*.mp4"))
    reader = MediaReader(backend="dali")
    assert reader.read(mp4, "video", Target(16, 16, 9)) is None
    assert reader.stats.skipped == {"undecodable": 1}


def test_without_dali_every_video_goes_through_pyav(monkeypatch, shapes_dir):
    import megagoku.data.decode as decode

    monkeypatch.setattr(decode, "dali_missing", lambda: "No module named 'nvidia.dali'")
    assert choose_backend("vp9") == "pyav" and choose_backend("h264", "cuda") == "pyav"
    reader = MediaReader()
    clip = next((shapes_dir / "clips").glob("*.webm"))
    assert reader.read(clip, "video", Target(16, 16, 9)) is not None
    assert reader.stats.decoded == {"pyav": 1}


def test_dali_asked_for_by_name_but_missing_is_refused_before_any_file(monkeypatch):
    import megagoku.data.decode as decode

    monkeypatch.setattr(decode, "dali_missing", lambda: "No module named 'nvidia.dali'")
    with pytest.raises(ValueError, match=r"^data.decode_backend: dali, but NVIDIA DALI is not "
                                         r"installed \(No module named 'nvidia.dali'\)"):
        MediaReader(backend="dali")
    assert MediaReader(backend="auto").backend == "auto"
