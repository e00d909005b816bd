"""OCR text coverage: how much of a frame is taken by its largest block of overlaid text.

The Goku paper filters out clips dominated by rendered text (news tickers, slides, subtitles
burnt into the picture) with one number per clip: the area of the largest text box divided by
the frame area. This runs PP-OCR (the PP-OCRv4 detection and recognition models that
rapidocr_onnxruntime ships inside its package; no download) through onnxruntime on the CPU.

A detected box counts as text only when it reads as text: the recogniser's reading of the box has
at least `MIN_CHARACTERS` letters or digits, with a confidence of at least `text_score`. The
detector alone answers "is there something shaped like a line of text here", and on footage it
has never seen it says yes to plain shapes: an 80x80 square on a plain ground came back as a
text box of 2.6% of an 864x480 frame (the recogniser reads it as "■"), a ring as "O", a plus as
"+", a triangle or three squares in a row as nothing. Rendered words read as themselves with
confidences above 0.9. Symbols and single characters are not text coverage.

Frames are resized so that their short side is `limit_side_len` before detection, whatever the
source resolution: the detector's own "min" policy only ever upscales, and a 1080p frame run at
full size costs three times a 736-pixel one (1.1 s against 0.35 s on one core) for the same
ratio. Coverage is a ratio of areas, so the resize does not change it. Small frames are upscaled
(a 256x192 frame runs at 981x736, ~0.2 s); `limit_side_len=320` is ~5x cheaper and found the
same headline boxes in tests. Reading a box costs a few ms (48-pixel-high crops).
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import cv2
import numpy as np

from megagoku.curation.media import check_frame

Frames = Union[np.ndarray, Sequence[np.ndarray]]


def shoelace_area(quad: np.ndarray) -> float:
    """Area of a simple polygon given as (N, 2) corner points in order (either direction)."""
    x, y = np.asarray(quad, dtype=np.float64).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


MIN_CHARACTERS = 2  # letters or digits a reading needs to count as text (a ring reads "O")


def _packaged_config(part: str) -> dict:
    """rapidocr's settings for `part` ("Det" or "Rec"), with its packaged model's path."""
    try:
        import rapidocr_onnxruntime
        import yaml
    except ImportError as exc:
        raise ValueError(f"OCR coverage needs rapidocr_onnxruntime and pyyaml ({exc})") from exc
    root = os.path.dirname(rapidocr_onnxruntime.__file__)
    with open(os.path.join(root, "config.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    out = dict(cfg["Global"])
    out.update(cfg[part])
    out["model_path"] = os.path.join(root, cfg[part]["model_path"])
    return out


def _packaged_det_config() -> dict:
    return _packaged_config("Det")


def reads_as_text(text: str, score: float, text_score: float) -> bool:
    """Whether a recogniser's reading is text: enough letters or digits, read confidently."""
    return score >= text_score and sum(c.isalnum() for c in text) >= MIN_CHARACTERS


def crop_box(bgr: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The box straightened into its own image (as PP-OCR crops for its recogniser); a tall
    box is turned on its side."""
    quad = np.asarray(quad, np.float32)
    w = max(1, int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3]))))
    h = max(1, int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))))
    target = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    crop = cv2.warpPerspective(bgr, cv2.getPerspectiveTransform(quad, target), (w, h),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if h / w >= 1.5:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


class TextCoverage:
    """A loaded PP-OCR text detector and recogniser; `coverage` scores one frame,
    `clip_coverage` a clip's keyframes, `read` shows what was detected and how it read. Build
    one per worker process and reuse it: loading costs a few tens of ms, each 736-pixel frame a
    few hundred on one core."""

    def __init__(self, model_path: str | None = None, limit_side_len: int = 736,
                 box_thresh: float = 0.5, threads: int = 1, text_score: float = 0.5,
                 rec_model_path: str | None = None):
        if not 0.0 <= float(text_score) <= 1.0:
            raise ValueError(f"text_score must lie in [0, 1]; got {text_score!r}")
        if not isinstance(limit_side_len, int) or limit_side_len < 32:
            raise ValueError(f"limit_side_len must be an int >= 32; got {limit_side_len!r}")
        if not 0.0 < float(box_thresh) < 1.0:
            raise ValueError(f"box_thresh must lie in (0, 1); got {box_thresh!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1; got {threads!r}")
        det_cfg = _packaged_det_config()
        if model_path is not None:
            if not os.path.isfile(model_path):
                raise ValueError(f"OCR detection model not found: {model_path}")
            det_cfg["model_path"] = str(model_path)
        det_cfg.update(limit_side_len=limit_side_len, limit_type="min",
                       box_thresh=float(box_thresh),
                       # Curation runs one process per core: onnxruntime's default of one
                       # thread per core in every process would oversubscribe the machine.
                       intra_op_num_threads=min(threads, os.cpu_count() or 1),
                       inter_op_num_threads=1, use_cuda=False, use_dml=False)
        rec_cfg = _packaged_config("Rec")
        if rec_model_path is not None:
            if not os.path.isfile(rec_model_path):
                raise ValueError(f"OCR recognition model not found: {rec_model_path}")
            rec_cfg["model_path"] = str(rec_model_path)
        rec_cfg.update(intra_op_num_threads=det_cfg["intra_op_num_threads"],
                       inter_op_num_threads=1, use_cuda=False, use_dml=False)
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
        self.model_path = det_cfg["model_path"]
        self.limit_side_len = limit_side_len
        self.text_score = float(text_score)
        self._detector = TextDetector(det_cfg)
        self._recognizer = TextRecognizer(rec_cfg)

    def _detect(self, frame) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4, 2) in the coordinates of the resized frame, and that frame (BGR)."""
        frame = check_frame(frame, "OCR coverage")
        h, w = frame.shape[:2]
        scale = self.limit_side_len / min(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(frame[..., ::-1])
        boxes, _ = self._detector(bgr)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32), bgr
        return np.asarray(boxes, np.float32).reshape(-1, 4, 2), bgr

    def read(self, frame: np.ndarray) -> list[tuple[np.ndarray, str, float]]:
        """Every detected box (in the frame's pixels) with the recogniser's reading and its
        confidence, text or not."""
        boxes, bgr = self._detect(frame)
        if len(boxes) == 0:
            return []
        readings, _ = self._recognizer([crop_box(bgr, b) for b in boxes])
        scale = np.array([frame.shape[1] / bgr.shape[1], frame.shape[0] / bgr.shape[0]],
                         np.float32)
        return [(b * scale, str(text), float(score)) for b, (text, score) in zip(boxes, readings)]

    def _text_boxes(self, frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        boxes, bgr = self._detect(frame)
        if len(boxes):
            readings, _ = self._recognizer([crop_box(bgr, b) for b in boxes])
            keep = [reads_as_text(text, score, self.text_score) for text, score in readings]
            boxes = boxes[np.asarray(keep, bool)]
        return boxes, bgr.shape[:2]

    def boxes(self, frame: np.ndarray) -> np.ndarray:
        """The text quadrilaterals (N, 4, 2) as (x, y) corners in the frame's pixels: detected
        boxes that read as text."""
        boxes, (h, w) = self._text_boxes(frame)
        return boxes * np.array([frame.shape[1] / w, frame.shape[0] / h], np.float32)

    def coverage(self, frame: np.ndarray) -> float:
        """Area of the largest text box over the frame area, in [0, 1]; 0.0 without text."""
        boxes, (h, w) = self._text_boxes(frame)
        if len(boxes) == 0:
            return 0.0
        largest = max(shoelace_area(b) for b in boxes)
        return float(min(1.0, max(0.0, largest / (h * w))))

    def clip_coverage(self, frames: Frames) -> float:
        """The largest `coverage` over the given keyframes ((T, H, W, 3) or a list of frames)."""
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError(f"clip_coverage needs frames (T, H, W, 3); got shape {frames.shape}")
        if len(frames) == 0:
            raise ValueError("clip_coverage needs at least one frame; got none")
        return max(self.coverage(f) for f in frames)
