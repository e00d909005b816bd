"""The probe stage on single records: each pre-filter reason, an unknown file type, and the
re-encode to H.264 at a new rate."""

from pathlib import Path

import numpy as np
import pytest

from megagoku.config.curate import load_curate_config
from megagoku.curation.media import probe, read_frames
from megagoku.curation.stages import ProbeStage
from megagoku.data.video_io import encode_video


def ramp(path: Path, frames: int, fps: int, size=(32, 48)) -> Path:
    video = np.stack([np.full((*size, 3), 8 * i, np.uint8) for i in range(frames)])
    encode_video(path, video, fps)
    return path


def stage(tmp_path, *overrides):
    cfg = load_curate_config(None, ["probe.min_side=16", "probe.min_bitrate_kbps=0",
                                    "probe.min_fps=4", "probe.min_duration=1", *overrides])
    return ProbeStage(cfg, tmp_path / "out")


def test_reencode_gives_h264_at_the_new_rate(tmp_path):
    src = ramp(tmp_path / "v.webm", 24, 8)  # VP9, 3 s at 8 fps
    (row,), dropped = stage(tmp_path, "probe.reencode=true", "probe.reencode_fps=4")(
        {"id": "v", "path": str(src), "source": str(src)})
    assert not dropped and row["fps"] == 4.0 and row["codec"] == "h264"
    info = probe(Path(row["path"]))
    assert (info.codec, info.fps) == ("h264", 4.0) and info.duration == pytest.approx(3.0)
    frames, _ = read_frames(Path(row["path"]))
    # Every other frame of the ramp: levels 0, 16, 32, ...
    assert len(frames) == 12
    assert np.all(np.abs(frames[:, 10, 10, 0].astype(int) - 16 * np.arange(12)) <= 3)


@pytest.mark.parametrize("override, reason", [
    ("probe.min_side=64", "low_resolution"), ("probe.min_duration=5", "too_short"),
    ("probe.min_fps=24", "low_fps"), ("probe.min_bitrate_kbps=100000", "low_bitrate"),
])
def test_each_prefilter_drops_with_its_reason(tmp_path, override, reason):
    src = ramp(tmp_path / "v.mp4", 24, 8)
    kept, (row,) = stage(tmp_path, override)({"id": "v", "path": str(src), "source": str(src)})
    assert not kept and row["reason"] == reason and row["detail"]


def test_an_unknown_file_type_is_dropped_not_fatal(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    kept, (row,) = stage(tmp_path)({"id": "n", "path": str(tmp_path / "notes.txt")})
    assert not kept and row["reason"] == "unknown_type"
