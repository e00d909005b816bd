"""Reading raw media: container metadata, frames at a rate or spread evenly, frame-rate
conversion, and clip files that appear whole or not at all."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megagoku.curation.media import ClipWriter, at_rate, probe, read_frames
from megagoku.data.decode import DecodeError
from megagoku.data.video_io import encode_video


def ramp_video(path: Path, frames: int = 24, fps: int = 8) -> Path:
    """Frame i is flat grey level 10 * i: which frame was read is visible in its pixels."""
    video = np.stack([np.full((32, 48, 3), 10 * i, np.uint8) for i in range(frames)])
    encode_video(path, video, fps)
    return path


def test_probe_reads_size_rate_duration_and_bitrate(tmp_path):
    info = probe(ramp_video(tmp_path / "v.mp4"))
    assert (info.kind, info.width, info.height, info.fps, info.codec) == ("video", 48, 32, 8.0,
                                                                          "h264")
    assert info.duration == pytest.approx(3.0) and info.bitrate_kbps > 0
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "i.png")
    assert probe(tmp_path / "i.png").width == 30


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"\x00" * 999, "unreadable")])
def test_unreadable_files_raise_with_their_reason(tmp_path, content, reason):
    (tmp_path / "bad.mp4").write_bytes(content)
    with pytest.raises(DecodeError) as e:
        probe(tmp_path / "bad.mp4")
    assert e.value.reason == reason
    with pytest.raises(DecodeError) as e:
        probe(tmp_path / "missing.mp4")
    assert e.value.reason == "missing"


def test_frames_at_a_rate_in_a_range_or_spread_evenly(tmp_path):
    path = ramp_video(tmp_path / "v.mp4")
    frames, times = read_frames(path, fps=2)
    assert np.allclose(times, [0, 0.5, 1.0, 1.5, 2.0, 2.5])
    levels = frames[:, 16, 24, 0].astype(int)
    assert np.all(np.abs(levels - np.array([0, 40, 80, 120, 160, 200])) <= 3)
    frames, times = read_frames(path, start=1.0, end=2.0)
    assert len(frames) == 8 and times[0] == pytest.approx(1.0)
    frames, times = read_frames(path, count=3)
    assert np.allclose(times, [0, 1.5, 2.875])


def test_at_rate_repeats_or_skips_frames_by_time():
    stream = [(i / 4, i) for i in range(8)]  # 4 fps, 2 s
    assert list(at_rate(iter(stream), 2)) == [0, 2, 4, 6]  # halved: 2 s of 2 fps
    assert list(at_rate(iter(stream[:3]), 8)) == [0, 0, 1, 1, 2, 2]  # doubled: 0.75 s of 8 fps


def test_a_clip_appears_only_when_complete(tmp_path):
    frames = np.zeros((5, 31, 47, 3), np.uint8)  # odd sides: cropped to even for yuv420p
    writer = ClipWriter(tmp_path / "a.mp4", 8, 47, 31)
    for f in frames:
        writer.write(f)
    assert not (tmp_path / "a.mp4").exists()
    writer.close()
    out, _ = read_frames(tmp_path / "a.mp4")
    assert out.shape == (5, 30, 46, 3)
    writer = ClipWriter(tmp_path / "b.mp4", 8, 47, 31)
    writer.write(frames[0])
    writer.abort()
    assert list(tmp_path.iterdir()) == [tmp_path / "a.mp4"]
