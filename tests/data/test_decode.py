"""Decoding files into samples: DALI for what it decodes on the CPU (VP9), PyAV for the rest
(H.264), Pillow for images; only the frames a sample uses, scaled in the decoder, equal to the
reference decode (every frame, float resize) within a stated tolerance; both video decoders agree;
bad files of every kind are skipped with one warning each and counted (issue 22: streams that
change size, 16-bit PNGs, rotation, images listed as videos)."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from megagoku.config.schema import DataConfig
from megagoku.data import pyav_clip
from megagoku.data.dali_clips import ClipRequest, DaliClipDecoder
from megagoku.data.decode import (DecodeError, MediaReader, Target, choose_backend, decode_image,
                                  decode_pyav, frame_indices, probe, to_pixels, to_unit_range)
from megagoku.data.geometry import crop_and_turn, plan_frame
from megagoku.data.manifest import load_manifest
from megagoku.data.pyav_clip import decode_clip
from megagoku.data.shapes import ShapesDataset
from megagoku.data.shapes_files import write_shapes_files
from tests.data.media import textured, write_clip

CFG = DataConfig(height=16, width=16, frames=9, image_fraction=0.25, seed=3)
# Decoder-side scaling against the reference (every frame to RGB at source size, then float
# antialiased bilinear): levels of 255 over a textured clip with a saturated square. The mean is
# the resampling filters' difference (swscale area/bicubic, DALI's linear); the 99th percentile is
# set by the square's edges, where 4:2:0 chroma is interpolated differently.
MEAN_LEVELS, P99_LEVELS = 2.0, 16.0
# DALI's pipeline against PyAV's decode on the same VP9 file (measured: mean <= 0.9, p99 <= 16).
DALI_MEAN_LEVELS, DALI_P99_LEVELS = 1.5, 20.0


def levels(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean and 99th percentile of |a - b| in levels of 255 (a, b in [-1, 1])."""
    diff = ((a - b).abs() * 127.5).flatten()
    return diff.mean().item(), torch.quantile(diff, 0.99).item()


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_files(out, CFG, 8, fps=8)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 12-frame textured 160x96 clip in VP9 and H.264, keyframes every 4 frames."""
    out = tmp_path_factory.mktemp("clips")
    frames = textured(12, 96, 160)
    return {suffix: write_clip(out / f"textured{suffix}", frames, gop=4)
            for suffix in (".webm", ".mp4")}


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


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_partial_decode_equals_the_full_decode_at_the_same_frames(clips, suffix):
    clip = clips[suffix]
    everything = decode_clip(clip, range(12), 32, 48)
    # From frame 5 with stride 2: a seek to the keyframe at 4, then frames 5, 7, 9 only.
    seeked = pyav_clip._decode(clip, [5, 7, 9], 32, 48, threads=1, seek=True)
    assert seeked is not None, "the seek was not trusted"
    np.testing.assert_array_equal(seeked, everything[[5, 7, 9]])
    np.testing.assert_array_equal(decode_clip(clip, [5, 5, 6], 32, 48), everything[[5, 5, 6]])
    # And the same frames as the reference decode of the whole file.
    reference = to_pixels(decode_pyav(clip)[[5, 7, 9]], Target(32, 48, 3))
    mean, p99 = levels(to_unit_range(seeked), reference)
    assert mean < MEAN_LEVELS and p99 < P99_LEVELS, (mean, p99)


def test_partial_decode_stops_at_the_last_frame_it_needs(clips, monkeypatch):
    import av

    seen = []
    real = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        for frame in real(self, *args, **kwargs):
            seen.append(frame.pts)
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    decode_clip(clips[".mp4"], [0, 1, 2], 16, 16)
    assert len(seen) == 3


def test_a_sample_opens_its_file_once(clips, monkeypatch):
    """The probe's open container is the decode's (one `avformat_find_stream_info` a sample),
    for PyAV and for DALI (its display matrix), and it is closed, also when the file is refused."""
    import av

    opened = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    target = Target(32, 48, 6)
    mp4, webm = clips[".mp4"], clips[".webm"]
    expected = to_unit_range(decode_clip(mp4, range(6), 32, 48))
    monkeypatch.setattr(av, "open", counting_open)
    reader = MediaReader(backend="pyav")
    torch.testing.assert_close(reader.read(mp4, "video", target), expected)
    assert len(opened) == 1
    assert MediaReader().read(webm, "video", target) is not None  # auto: DALI for VP9
    assert reader.read(mp4, "video", Target(32, 48, 13)) is None  # 12 frames: too short
    assert len(opened) == 3 and reader.stats.skipped == {"too_short": 1}
    assert all(len(container.streams) == 0 for container in opened)  # closed


def test_nonreference_deblocking_is_skipped_only_when_the_shrink_hides_it(clips, monkeypatch):
    assert pyav_clip.SKIP_NONREF_DEBLOCK_FACTOR == 4.0
    assert pyav_clip.decoder_options(1080, 1920, 64, 64) == {"skip_loop_filter": "noref"}
    assert pyav_clip.decoder_options(256, 448, 64, 64) == {"skip_loop_filter": "noref"}  # 4x
    assert pyav_clip.decoder_options(255, 448, 64, 64) == {}
    assert pyav_clip.decoder_options(96, 160, 32, 32) == {}  # 3x
    # A display matrix could turn the frame: the less-shrunk side either way up decides.
    assert pyav_clip.decoder_options(1080, 1920, 64, 400) == {}
    assert pyav_clip.decoder_options(1920, 1080, 400, 64) == {}
    # The decoder asks with the stream's stored size and the target.
    asked = []
    real = pyav_clip.decoder_options
    monkeypatch.setattr(pyav_clip, "decoder_options", lambda *a: asked.append(a) or real(*a))
    decode_clip(clips[".mp4"], [0, 1], 24, 40)
    assert asked == [(96, 160, 24, 40)]


@pytest.fixture(scope="module")
def coarse(tmp_path_factory) -> Path:
    """48 frames of 256x448 H.264 in one GOP with B-frames, at a quantiser that deblocks (at
    the other clips' crf 12 the filter is off)."""
    out = tmp_path_factory.mktemp("coarse")
    return write_clip(out / "coarse.mp4", textured(48, 256, 448, seed=1), quality="30")


def test_skipped_deblocking_changes_only_frames_no_frame_references(coarse, monkeypatch):
    """At source size (the rule forced on), B-frames differ from the full decode; the I- and
    P-frames that the rest are predicted from do not: the error cannot drift through a GOP."""
    import av

    full = decode_clip(coarse, range(48), 256, 448)
    monkeypatch.setattr(pyav_clip, "SKIP_NONREF_DEBLOCK_FACTOR", 0.0)
    skipped = decode_clip(coarse, range(48), 256, 448)
    with av.open(str(coarse)) as container:
        # AVPictureType: 1 I, 2 P, 3 B.
        kinds = ["-IPB"[int(frame.pict_type)] for frame in container.decode(video=0)]
    changed = [i for i in range(48) if not np.array_equal(full[i], skipped[i])]
    assert changed and all(kinds[i] == "B" for i in changed), (kinds, changed)
    assert kinds.count("P") > 4 and changed[-1] > 40


def test_skipped_deblocking_is_within_tolerance_of_to_pixels(coarse, monkeypatch):
    """4x smaller each side (the rule's edge), frames to the 46th of one long GOP."""
    asked = []
    real = pyav_clip.decoder_options
    monkeypatch.setattr(pyav_clip, "decoder_options",
                        lambda *a: asked.append(real(*a)) or asked[-1])
    target = Target(64, 64, 16, fps=8.0 / 3)  # frames 0, 3, ..., 45
    pixels = MediaReader(backend="pyav").read(coarse, "video", target)
    assert asked == [{"skip_loop_filter": "noref"}]
    indices = frame_indices(coarse, 48, 8.0, target)
    assert indices[-1] == 45
    reference = to_pixels(decode_pyav(coarse)[indices], target)
    mean, p99 = levels(pixels, reference)
    assert mean < MEAN_LEVELS and p99 < P99_LEVELS, (mean, p99)


@pytest.mark.parametrize("target", [Target(32, 32, 8), Target(24, 40, 4, fps=4.0),
                                    Target(64, 64, 6), Target(128, 200, 3)])
def test_decoder_side_resize_is_within_tolerance_of_to_pixels(clips, target):
    for suffix, backend in ((".mp4", "pyav"), (".webm", "pyav"), (".webm", "dali")):
        reader = MediaReader(backend=backend)
        pixels = reader.read(clips[suffix], "video", target)
        indices = frame_indices(clips[suffix], 12, 8.0, target)
        reference = to_pixels(decode_pyav(clips[suffix])[indices], target)
        assert pixels.shape == reference.shape == (3, target.frames, target.height, target.width)
        mean, p99 = levels(pixels, reference)
        assert mean < MEAN_LEVELS and p99 < P99_LEVELS, (suffix, backend, mean, p99)
        assert reader.stats.decoded == {backend: 1}


def test_dali_pipeline_equals_pyav_on_vp9_within_tolerance(clips, shapes_dir, monkeypatch):
    webm = clips[".webm"]
    shapes_webm = next((shapes_dir / "clips").glob("*.webm"))
    assert probe(webm).codec == "vp9" and choose_backend("vp9") == "dali"
    assert choose_backend("h264") == "pyav" and choose_backend("h264", "cuda") == "dali"
    requests = [(webm, "video", Target(32, 32, 8)), (webm, "video", Target(24, 40, 4, fps=4.0)),
                (shapes_webm, "video", Target(16, 16, 9)), (webm, "video", Target(64, 64, 6)),
                (webm, "video", Target(48, 48, 1))]
    runs = []
    real_run = DaliClipDecoder._run
    monkeypatch.setattr(DaliClipDecoder, "_run",
                        lambda self, items: runs.append(len(items)) or real_run(self, items))
    dali = MediaReader(dali_batch=2).read_many(requests)  # 3 batches of the prefetch queue
    assert runs == [5]  # one pipeline epoch for the whole request
    pyav = MediaReader(backend="pyav").read_many(requests)
    for (_, _, target), a, b in zip(requests, dali, pyav):
        assert a.shape == b.shape == (3, target.frames, target.height, target.width)
        mean, p99 = levels(a, b)
        assert mean < DALI_MEAN_LEVELS and p99 < DALI_P99_LEVELS, (target, mean, p99)


def test_frame_sampling_follows_the_target_rate(shapes_dir):
    clip = next((shapes_dir / "clips").glob("*.mp4"))
    frames = decode_pyav(clip)
    assert list(frame_indices(clip, 9, 8.0, Target(16, 16, 5, fps=4.0))) == [0, 2, 4, 6, 8]
    assert list(frame_indices(clip, 9, 8.0, Target(16, 16, 9))) == list(range(9))
    reader = MediaReader()
    half = reader.read(clip, "video", Target(16, 16, 5, fps=4.0))
    torch.testing.assert_close(half, to_unit_range(decode_clip(clip, [0, 2, 4, 6, 8], 16, 16)))
    assert levels(half, to_pixels(frames[::2], Target(16, 16, 5)))[0] < MEAN_LEVELS
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


@pytest.mark.parametrize("rotation", [0, 90, 180, 270, -90])
def test_a_plan_crops_in_stored_coordinates_what_turning_first_would_crop(rotation):
    rng = np.random.default_rng(rotation % 360)
    for h, w, th, tw in ((30, 51, 10, 7), (31, 20, 9, 9), (17, 40, 16, 5)):
        plan = plan_frame(h, w, th, tw, rotation)
        k = plan.turns
        scaled = rng.integers(0, 255, size=(2, *plan.scaled, 3), dtype=np.uint8)
        shown = np.rot90(scaled, k, axes=(1, 2))
        top, left = (shown.shape[1] - th) // 2, (shown.shape[2] - tw) // 2
        np.testing.assert_array_equal(crop_and_turn(scaled, plan),
                                      shown[:, top:top + th, left:left + tw])


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
    assert all("\n" not in line for line in lines)
    assert any("absent.webm: no such file" in line for line in lines)
    assert reader.stats.as_metrics()["data/skipped"] == 6


def test_any_exception_while_reading_a_file_is_a_counted_skip(shapes_dir, monkeypatch, caplog):
    import megagoku.data.decode as decode

    def broken(*args, **kwargs):
        raise KeyError("a decoder bug")

    monkeypatch.setattr(decode, "decode_clip", broken)
    mp4 = next((shapes_dir / "clips").glob("*.mp4"))
    reader = MediaReader()
    with caplog.at_level(logging.WARNING, logger="megagoku.data.decode"):
        assert reader.read(mp4, "video", Target(16, 16, 9)) is None
    assert reader.stats.skipped == {"error": 1}
    assert caplog.records[-1].getMessage() == f"skipping {mp4}: KeyError: 'a decoder bug'"


def test_a_stream_that_changes_size_midway_decodes_at_the_target_size(tmp_path):
    # Two MPEG-TS segments of different sizes, concatenated (issue 22, case 6): frames 0-5 are
    # 64x48 and green, frames 6-11 are 96x64 and blue.
    green = np.zeros((6, 48, 64, 3), np.uint8)
    green[..., 1] = 200
    blue = np.zeros((6, 64, 96, 3), np.uint8)
    blue[..., 2] = 200
    first = write_clip(tmp_path / "a.ts", green)
    second = write_clip(tmp_path / "b.ts", blue)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    reader = MediaReader()
    pixels = reader.read(joined, "video", Target(16, 16, 12))
    assert pixels is not None and pixels.shape == (3, 12, 16, 16)
    rgb = ((pixels.mean(dim=(2, 3)) + 1) * 127.5).T  # (T, 3) mean colour
    assert (rgb[:6, 1] > 180).all() and (rgb[:6, 2] < 30).all()
    assert (rgb[6:, 2] > 180).all() and (rgb[6:, 1] < 30).all()
    assert reader.stats.decoded == {"pyav": 1}


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of (H, W) grey or (H, W, 3) RGB uint16 values, written by hand (Pillow
    writes 16-bit grey only)."""
    import struct
    import zlib

    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" +
                     chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)) +
                     chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_16_bit_pngs_keep_their_levels(tmp_path):
    # Issue 22, case 9: Pillow's convert("RGB") turned 16-bit grey almost all white.
    ramp = np.repeat(np.linspace(0, 65535, 16).astype(np.uint16)[None], 16, axis=0)
    grey = decode_image(write_png16(tmp_path / "grey16.png", ramp), Target(16, 16))
    expected = torch.from_numpy(np.round(ramp / 257.0) / 127.5 - 1.0).float()
    for channel in range(3):
        torch.testing.assert_close(grey[channel, 0], expected, atol=1 / 127.5, rtol=0)
    rgb = np.stack([ramp, 65535 - ramp, ramp // 2], axis=-1)
    colour = decode_image(write_png16(tmp_path / "rgb16.png", rgb), Target(16, 16))
    torch.testing.assert_close(colour[1, 0], expected.flip(1), atol=1 / 127.5, rtol=0)


def corner_marked(h: int, w: int) -> np.ndarray:
    """(h, w, 3) grey with a white top-left quarter block: where it ends up shows the turn."""
    frame = np.full((h, w, 3), 60, np.uint8)
    frame[:h // 2, :w // 2] = 240
    return frame


def bright_corner(pixels: torch.Tensor) -> str:
    """Which quadrant of a (3, T, H, W) sample's first frame is bright."""
    frame = pixels[:, 0].mean(0)
    h, w = frame.shape
    quads = {"top-left": frame[:h // 2, :w // 2], "top-right": frame[:h // 2, w // 2:],
             "bottom-left": frame[h // 2:, :w // 2], "bottom-right": frame[h // 2:, w // 2:]}
    return max(quads, key=lambda k: quads[k].mean().item())


# Turning a frame counterclockwise moves its top-left corner here.
CORNER_AFTER = {0: "top-left", 90: "bottom-left", 180: "bottom-right", 270: "top-right",
                -90: "top-right"}


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_phone_videos_display_matrix_is_applied(tmp_path, rotation):
    # Issue 22, case 10: stored landscape 64x32, shown turned (portrait for +-90).
    frames = np.stack([corner_marked(32, 64)] * 3)
    for suffix, backend in ((".mp4", "pyav"), (".mkv", "dali")):  # H.264; VP9 through DALI
        clip = write_clip(tmp_path / f"turned{suffix}", frames, rotation=rotation)
        reader = MediaReader()
        shown = (64, 32) if rotation % 180 else (32, 64)
        pixels = reader.read(clip, "video", Target(*shown, 3))
        assert reader.stats.decoded == {backend: 1}
        assert pixels.shape == (3, 3, *shown)
        assert bright_corner(pixels) == CORNER_AFTER[rotation], (suffix, rotation)


@pytest.mark.parametrize("orientation, corner", [(1, "top-left"), (3, "bottom-right"),
                                                 (6, "top-right"), (8, "bottom-left")])
def test_a_jpegs_exif_orientation_is_applied(tmp_path, orientation, corner):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: shown turned 90 degrees clockwise, 8: counterclockwise
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(corner_marked(32, 64)).save(path, exif=exif, quality=95)
    shown = (64, 32) if orientation in (6, 8) else (32, 64)
    pixels = decode_image(path, Target(*shown))
    assert pixels.shape == (3, 1, *shown)
    assert bright_corner(pixels) == corner


def test_an_image_listed_as_a_video_is_a_skip_with_its_reason(tmp_path, caplog):
    # Issue 22, case 13: not a 1-frame video, whatever its suffix says.
    from PIL import Image

    Image.fromarray(corner_marked(16, 16)).save(tmp_path / "still.png")
    (tmp_path / "still.mp4").write_bytes((tmp_path / "still.png").read_bytes())
    reader = MediaReader()
    with caplog.at_level(logging.WARNING, logger="megagoku.data.decode"):
        assert reader.read(tmp_path / "still.png", "video", Target(16, 16, 1)) is None
        assert reader.read(tmp_path / "still.mp4", "video", Target(16, 16, 1)) is None
    assert reader.stats.skipped == {"not_video": 2}
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith("still.png: listed as a video, but it is an image (.png)")
    assert "still.mp4: listed as a video, but it is an image (png" in lines[1]
    assert reader.read(tmp_path / "still.png", "image", Target(16, 16)) is not None


def test_dali_says_why_and_recovers_after_a_failed_file_in_a_batch(shapes_dir, tmp_path):
    webm = next((shapes_dir / "clips").glob("*.webm"))
    (tmp_path / "cut.webm").write_bytes(webm.read_bytes()[:200])
    plan = plan_frame(16, 16, 16, 16)
    decoder = DaliClipDecoder(batch_size=3)
    good = ClipRequest(webm, tuple(range(9)), plan)
    out = decoder.decode([good, ClipRequest(tmp_path / "cut.webm", tuple(range(9)), plan), good])
    assert out[0].shape == out[2].shape == (9, 16, 16, 3)
    error = out[1]
    assert isinstance(error, DecodeError) and error.reason == "undecodable"
    assert "DALI could not decode it (" in str(error)
    assert "fn.decoders.video" not in str(error) and "\n" not in str(error)
    assert decoder.decode([good])[0].shape == (9, 16, 16, 3)  # the pipeline was rebuilt
    np.testing.assert_array_equal(out[0], out[2])


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
