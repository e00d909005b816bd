"""The per-file stages of `megagoku curate`: each takes one record and returns the records it
keeps (a source becomes its clips) and those it drops, each with a `reason`.

A record is a JSON object: `id`, `source` (the raw file it came from), `path` (the file it
reads: the source, or its clip), `kind`, `start`/`end` (seconds in the source), `width`,
`height`, `fps`, `frames`, `caption`, `timed_captions`, `captions` (per caption source),
`scores`, `tags`, `phash`. Models are loaded once per worker process (`setup`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from megagoku.config.curate import CurateConfig
from megagoku.curation.media import ClipWriter, iter_frames, media_kind, probe, read_frames
from megagoku.data.decode import DecodeError

log = logging.getLogger(__name__)
Row = dict[str, Any]
Result = tuple[list[Row], list[Row]]  # (kept, dropped)


def dropped(row: Row, reason: str, detail: str = "") -> Row:
    out = {**row, "reason": reason}
    if detail:
        out["detail"] = detail
    return out


class Stage(ABC):
    name = ""

    def __init__(self, cfg: CurateConfig, out_dir: Path):
        self.cfg = cfg
        self.out_dir = out_dir

    def setup(self) -> None:
        """Load models; runs in the worker process that will use them."""

    @abstractmethod
    def process(self, row: Row) -> Result:
        """(kept rows, dropped rows) of one input row."""

    def __call__(self, row: Row) -> Result:
        """`process`, with a file that cannot be read dropped under its reason instead of raised."""
        try:
            return self.process(row)
        except DecodeError as e:
            return [], [dropped(row, e.reason, str(e))]


class ProbeStage(Stage):
    """Container metadata and Goku's pre-filter; optionally re-encode to H.264 at one rate."""

    name = "probe"

    def process(self, row: Row) -> Result:
        cfg = self.cfg.probe
        path = Path(row["path"])
        kind = media_kind(path)
        if kind is None:
            return [], [dropped(row, "unknown_type", f"{path.suffix!r} is not a known media type")]
        info = probe(path)
        row = {**row, "kind": kind, "width": info.width, "height": info.height}
        if kind == "video":
            row.update(fps=info.fps, start=0.0, end=info.duration,
                       bitrate_kbps=round(info.bitrate_kbps, 1), codec=info.codec)
        checks = [("low_resolution", min(info.width, info.height) < cfg.min_side,
                   f"short side {min(info.width, info.height)} < {cfg.min_side}")]
        if kind == "video":
            checks += [
                ("too_short", info.duration < cfg.min_duration,
                 f"{info.duration:.2f} s < {cfg.min_duration} s"),
                ("low_fps", info.fps < cfg.min_fps, f"{info.fps:.2f} fps < {cfg.min_fps}"),
                ("low_bitrate", info.bitrate_kbps < cfg.min_bitrate_kbps,
                 f"{info.bitrate_kbps:.0f} kbps < {cfg.min_bitrate_kbps}"),
            ]
        for reason, failed, detail in checks:
            if failed:
                return [], [dropped(row, reason, detail)]
        if kind == "video" and cfg.reencode:
            row = self._reencode(row)
        return [row], []

    def _reencode(self, row: Row) -> Row:
        from megagoku.curation.media import at_rate

        target = self.cfg.probe.reencode_fps or row["fps"]
        out = self.out_dir / "sources" / f"{row['id']}.mp4"
        writer = ClipWriter(out, target, row["width"], row["height"])
        try:
            for frame in at_rate(iter_frames(Path(row["path"])), target):
                writer.write(frame)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return {**row, "path": str(out), "fps": float(target), "codec": "h264"}


def _caption_at(timed: list[Row], start: float, end: float) -> str:
    """The timed caption overlapping [start, end) the most."""
    best, overlap = "", 0.0
    for item in timed:
        o = min(end, item["end"]) - max(start, item["start"])
        if o > overlap:
            best, overlap = item["text"], o
    return best


class SplitStage(Stage):
    """A video becomes its clips (curation/split.py); an image passes through."""

    name = "split"

    def setup(self) -> None:
        from megagoku.curation.features import build_embedder

        self.embedder = build_embedder(self.cfg.split.features, self.cfg.split.model_dir,
                                       device=self.cfg.device)

    def process(self, row: Row) -> Result:
        from megagoku.curation.split import segments, split_points, write_clips

        if row["kind"] == "image":
            return [{**row, "source": row["path"]}], []
        cfg = self.cfg.split
        path = Path(row["path"])
        cuts, fine, duration = split_points(path, row["fps"], cfg, self.embedder)
        kept, short = segments(cuts + fine, duration, cfg)
        base = {k: v for k, v in row.items() if k not in ("timed_captions", "bitrate_kbps")}
        base.update(source=row.get("source", row["path"]), cuts=len(cuts), fine_cuts=len(fine))

        def clip(k: int, seg) -> Row:
            out = {**base, "id": f"{row['id']}.{k:03d}", "start": round(seg.start, 3),
                   "end": round(seg.end, 3)}
            if row.get("timed_captions"):
                out["caption"] = _caption_at(row["timed_captions"], seg.start, seg.end)
            return out

        clips = [clip(k, seg) for k, seg in enumerate(kept)]
        paths = [self.out_dir / "clips" / row["id"] / f"{k:03d}{cfg.clip_format}"
                 for k in range(len(kept))]
        counts = write_clips(path, row["fps"], kept, paths)
        for c, p, n in zip(clips, paths, counts):
            c.update(path=str(p), frames=n)
        too_short = [dropped(clip(len(kept) + k, seg), "clip_too_short",
                             f"{seg.seconds:.2f} s < {cfg.min_clip_seconds} s")
                     for k, seg in enumerate(short)]
        if not clips:
            too_short.append(dropped(row, "no_clips", "no scene long enough for a clip"))
        return clips, too_short


class FilterStage(Stage):
    """Aesthetic, OCR text coverage and motion scores, the perceptual hash, and the tier's
    thresholds."""

    name = "filter"

    def setup(self) -> None:
        from megagoku.curation.aesthetic import build_aesthetic_scorer
        from megagoku.curation.ocr import TextCoverage

        cfg = self.cfg.filter
        self.aesthetic = (None if cfg.aesthetic == "none" else build_aesthetic_scorer(
            cfg.aesthetic, cfg.clip_dir, cfg.head_path, device=self.cfg.device))
        self.ocr = (TextCoverage(cfg.ocr_model, box_thresh=cfg.ocr_box_thresh,
                                 text_score=cfg.ocr_text_score) if cfg.ocr
                    else None)

    def scores(self, row: Row) -> tuple[dict[str, float], str]:
        import numpy as np

        from megagoku.curation.motion import motion_score
        from megagoku.curation.phash import clip_phash

        cfg = self.cfg.filter
        path = Path(row["path"])
        frames, _ = read_frames(path, fps=cfg.motion_fps)
        keys = frames[np.linspace(0, len(frames) - 1, min(cfg.keyframes, len(frames)))
                      .round().astype(int)]
        scores = dict(row.get("scores") or {})
        if self.aesthetic is not None:
            scores["aesthetic"] = round(float(self.aesthetic.score(keys)), 4)
        if self.ocr is not None:
            scores["text"] = round(float(self.ocr.clip_coverage(keys)), 5)
        if row["kind"] == "video" and cfg.motion != "none":
            scores["motion"] = round(float(motion_score(frames, backend=cfg.motion,
                                                        weights_path=cfg.raft_weights)), 4)
        return scores, f"{clip_phash(keys):016x}"

    def process(self, row: Row) -> Result:
        cfg = self.cfg.filter
        scores, phash = self.scores(row)
        row = {**row, "scores": scores, "phash": phash}
        checks = [
            ("low_aesthetic", cfg.min_aesthetic, scores.get("aesthetic"),
             lambda v: v < cfg.min_aesthetic, "<"),
            ("text", cfg.max_text_coverage, scores.get("text"),
             lambda v: v > cfg.max_text_coverage, ">"),
            ("static", cfg.min_motion, scores.get("motion"), lambda v: v < cfg.min_motion, "<"),
            ("too_fast", cfg.max_motion, scores.get("motion"), lambda v: v > cfg.max_motion, ">"),
        ]
        for reason, limit, value, fails, op in checks:
            if limit is not None and value is not None and fails(value):
                return [], [dropped(row, reason, f"{value:g} {op} {limit:g}")]
        return [row], []


class CaptionStage(Stage):
    """Each clip's caption from the configured sources; a clip without one is dropped."""

    name = "caption"

    def setup(self) -> None:
        cfg = self.cfg.caption
        self.captioner = None
        if "model" in cfg.sources and cfg.model_dir:
            from megagoku.curation.captioning import build_captioner

            self.captioner = build_captioner(cfg.model_dir, device=self.cfg.device,
                                             max_new_tokens=cfg.max_new_tokens)

    def process(self, row: Row) -> Result:
        from megagoku.curation.captioning import append_motion, merge_captions

        cfg = self.cfg.caption
        captions = dict(row.get("captions") or {})
        if self.captioner is not None:
            keys, _ = read_frames(Path(row["path"]), count=self.cfg.filter.keyframes)
            captions["model"] = self.captioner.caption(keys)
        row = {**row, "captions": captions}
        caption = merge_captions(row, cfg.sources, cfg.strategy)
        if not caption:
            return [], [dropped(row, "no_caption", f"none of {cfg.sources} gave a caption")]
        if cfg.append_motion:
            caption = append_motion(caption, (row.get("scores") or {}).get("motion"))
        return [{**row, "caption": caption}], []


MAP_STAGES = {s.name: s for s in (ProbeStage, SplitStage, FilterStage, CaptionStage)}
