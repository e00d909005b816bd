"""OCR text coverage: the largest PP-OCR text box over the frame area, close to the drawn text's
bounding box; ~0 without text, and exactly 0 for the plain shapes, stripes and checkerboards the
detector alone takes for text (only boxes that read as words count); the largest box counts,
not the sum; the same at any resolution; bad frames and a missing model file raise ValueError."""

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from megagoku.curation.ocr import TextCoverage, shoelace_area

W, H = 256, 192


def draw(lines, size=(W, H), background=(30, 60, 90), fill=(255, 255, 255)):
    """A frame with each (text, font size, (x, y)) drawn (in white); returns it and the
    fraction of the frame each text's bounding box covers."""
    image = Image.new("RGB", size, background)
    pen = ImageDraw.Draw(image)
    fractions = []
    for text, font_size, xy in lines:
        font = ImageFont.load_default(size=font_size)
        pen.text(xy, text, font=font, fill=fill)
        x0, y0, x1, y1 = pen.textbbox(xy, text, font=font)
        fractions.append((x1 - x0) * (y1 - y0) / (size[0] * size[1]))
    return np.array(image), fractions


@pytest.fixture(scope="module")
def detector():
    return TextCoverage()


def test_shoelace_area_of_a_rectangle_and_a_skewed_quad():
    rect = np.array([[1, 1], [5, 1], [5, 4], [1, 4]])
    assert shoelace_area(rect) == 12.0
    assert shoelace_area(rect[::-1]) == 12.0
    assert shoelace_area(np.array([[0, 0], [4, 0], [6, 2], [2, 2]])) == 8.0


def test_headline_coverage_matches_the_drawn_text_box(detector):
    frame, (expected,) = draw([("BREAKING NEWS", 28, (10, 80))])
    got = detector.coverage(frame)
    assert 0.5 * expected < got < 2.0 * expected, (got, expected)


def test_small_caption_gives_a_small_positive_coverage(detector):
    frame, (expected,) = draw([("caption here", 10, (5, 175))])
    got = detector.coverage(frame)
    assert 0.0 < got < 0.03
    assert 0.5 * expected < got < 2.0 * expected, (got, expected)


def test_frames_without_text_score_zero(detector):
    rng = np.random.default_rng(0)
    flat = np.full((H, W, 3), 120, np.uint8)
    textured = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (0, 0), 3)
    # (Filled rectangles, which the detector alone boxes as text: see plain_shapes below.)
    for canvas in (flat, textured):
        cv2.circle(canvas, (180, 120), 40, (0, 255, 0), -1)
        cv2.circle(canvas, (60, 60), 25, (255, 0, 0), -1)
        cv2.fillPoly(canvas, [np.array([[100, 170], [150, 100], [200, 180]])], (255, 255, 0))
        cv2.line(canvas, (0, 180), (255, 150), (255, 255, 255), 3)
    assert detector.coverage(flat) < 0.005
    assert detector.coverage(textured) < 0.005
    assert detector.coverage(np.full((H, W, 3), 120, np.uint8)) == 0.0


def test_the_largest_box_counts_not_the_sum(detector):
    frame, (big, second) = draw([("BREAKING NEWS", 28, (10, 30)),
                                 ("HELLO WORLD 2024", 20, (8, 140))])
    assert len(detector.boxes(frame)) == 2
    alone, _ = draw([("BREAKING NEWS", 28, (10, 30))])
    got, expected = detector.coverage(frame), detector.coverage(alone)
    assert abs(got - expected) < 0.1 * expected, (got, expected)
    assert got < 0.8 * (big + second)


def test_coverage_does_not_depend_on_the_resolution(detector):
    # 1024x768 is downscaled to the 736 short side before detection; 256x192 is upscaled.
    small, _ = draw([("BREAKING NEWS", 28, (10, 80))])
    large, _ = draw([("BREAKING NEWS", 112, (40, 320))], size=(4 * W, 4 * H))
    a, b = detector.coverage(small), detector.coverage(large)
    assert a > 0.03 and abs(a - b) < 0.15 * a, (a, b)
    boxes = detector.boxes(large)
    assert len(boxes) == 1 and boxes[0, :, 0].max() > 3 * W  # in the large frame's pixels


def test_clip_coverage_is_the_max_over_keyframes(detector):
    text, _ = draw([("BREAKING NEWS", 28, (10, 80))])
    flat = np.full_like(text, 120)
    assert detector.clip_coverage(np.stack([flat, text, flat])) == detector.coverage(text)
    assert detector.clip_coverage([flat]) == 0.0
    with pytest.raises(ValueError, match="at least one frame"):
        detector.clip_coverage([])
    with pytest.raises(ValueError, match="T, H, W, 3"):
        detector.clip_coverage(text)


@pytest.mark.parametrize("frame", [np.zeros((H, W), np.uint8), np.zeros((H, W, 3), np.float32),
                                   np.zeros((H, W, 4), np.uint8), [[0, 0, 0]]])
def test_bad_frames_raise(detector, frame):
    with pytest.raises(ValueError, match="uint8 RGB frame"):
        detector.coverage(frame)


def test_a_missing_model_file_is_named(tmp_path):
    missing = tmp_path / "det.onnx"
    with pytest.raises(ValueError, match="det.onnx"):
        TextCoverage(model_path=str(missing))
    with pytest.raises(ValueError, match="limit_side_len"):
        TextCoverage(limit_side_len=8)


def test_an_explicit_model_path_is_used(detector):
    again = TextCoverage(model_path=detector.model_path, limit_side_len=320)
    frame, (expected,) = draw([("BREAKING NEWS", 28, (10, 80))])
    assert 0.5 * expected < again.coverage(frame) < 2.0 * expected


def plain_shapes() -> dict:
    """Frames without text that PP-OCR's detector boxes (issue 22, case 19), at 864x480 as the
    footage it was found on: solid shapes on plain grounds, stripes, checkerboards."""
    h, w = 480, 864
    out = {}

    def ground(value):
        return np.full((h, w, 3), value, np.uint8)

    f = ground(200)
    cv2.rectangle(f, (400, 200), (480, 280), (40, 40, 40), -1)  # the 80x80 square
    out["dark square on light grey"] = f
    f = ground(30)
    cv2.rectangle(f, (400, 200), (480, 280), (230, 230, 230), -1)
    out["light square on dark"] = f
    f = ground(120)
    cv2.rectangle(f, (100, 200), (180, 240), (255, 255, 255), -1)
    out["a bar of text-line proportions"] = f
    f = ground(200)
    cv2.circle(f, (430, 240), 40, (0, 0, 0), 8)
    out["a ring (reads as O)"] = f
    f = ground(200)
    cv2.rectangle(f, (420, 180), (440, 300), (0, 0, 0), -1)
    cv2.rectangle(f, (370, 230), (490, 250), (0, 0, 0), -1)
    out["a plus (reads as +)"] = f
    f = ground(200)
    cv2.fillPoly(f, [np.array([[430, 180], [380, 280], [480, 280]])], (40, 40, 40))
    out["a triangle"] = f
    f = ground(200)
    for i in range(3):
        cv2.rectangle(f, (300 + i * 90, 200), (370 + i * 90, 270), (40, 40, 40), -1)
    out["three squares in a row"] = f
    y, x = np.mgrid[0:h, 0:w]
    for period in (24, 60):
        out[f"vertical stripes {period}"] = ((x // (period // 2)) % 2 * 255).astype(np.uint8)[
            ..., None].repeat(3, 2)
    out["horizontal stripes"] = ((y // 8) % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2)
    for cell in (8, 32):
        out[f"checkerboard {cell}"] = (((y // cell + x // cell) % 2) * 255).astype(np.uint8)[
            ..., None].repeat(3, 2)
    rng = np.random.default_rng(0)
    f = ground(128)
    for _ in range(20):
        x0, y0 = (int(v) for v in rng.integers(0, (w - 60, h - 30)))
        cv2.rectangle(f, (x0, y0), (x0 + int(rng.integers(10, 60)), y0 + int(rng.integers(8, 30))),
                      tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    out["random filled rectangles"] = f
    return out


@pytest.mark.parametrize("box_thresh", [0.5, 0.7])  # the default, and the curation tiers'
def test_plain_shapes_stripes_and_checkerboards_score_zero(box_thresh):
    detector = TextCoverage(box_thresh=box_thresh)
    scores = {name: detector.coverage(frame) for name, frame in plain_shapes().items()}
    assert all(score == 0.0 for score in scores.values()), scores


def test_a_detected_shape_is_read_and_not_counted(detector):
    square = plain_shapes()["dark square on light grey"]
    readings = detector.read(square)
    assert len(readings) == 1  # the detector does box it...
    _, text, score = readings[0]
    assert sum(c.isalnum() for c in text) < 2, (text, score)  # ...but it reads as no word
    assert len(detector.boxes(square)) == 0 and detector.coverage(square) == 0.0


@pytest.mark.parametrize("words,size,background,fill", [
    ("BREAKING NEWS", 60, (30, 60, 90), (255, 255, 255)),
    ("subscribe now", 24, (200, 200, 200), (0, 0, 0)),
    ("SALE 50% OFF", 40, (25, 25, 25), (240, 240, 40)),
])
def test_rendered_words_score_their_box(detector, words, size, background, fill):
    frame, (expected,) = draw([(words, size, (40, 200))], size=(864, 480),
                              background=background, fill=fill)
    got = detector.coverage(frame)
    assert 0.5 * expected < got < 2.0 * expected, (words, got, expected)
    (_, text, score), = detector.read(frame)
    assert text.replace(" ", "").lower() == words.replace(" ", "").lower() and score > 0.9
