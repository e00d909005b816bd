"""Media manifests: one record per image or clip, in JSONL or Parquet.

The format the data path reads and the curation pipeline writes:

    {"path": "clips/0001.webm", "caption": "a red circle moving left", "kind": "video",
     "width": 640, "height": 360, "frames": 121, "fps": 24.0,
     "scores": {"aesthetic": 5.1, "motion": 3.2}, "tags": ["animation"]}

`path` is relative to the manifest's folder (or absolute); `frames` is 1 and `fps` may be left out
for images; `scores` (name -> number) and `tags` (strings) are optional. Unknown fields are refused,
so that a misspelt field is an error rather than silently missing data. A bad manifest stops
loading with one line naming the file, the line (JSONL) or row (Parquet), and the field, plus how
many other problems there are.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional

KINDS = ("image", "video")
REQUIRED = ("path", "caption", "kind", "width", "height", "frames")
OPTIONAL = ("fps", "scores", "tags")
SUFFIXES = (".jsonl", ".parquet")


class ManifestError(ValueError):
    """A manifest that cannot be read or holds an invalid record."""


@dataclass(frozen=True)
class MediaRecord:
    path: Path  # resolved against the manifest's folder
    caption: str
    kind: Literal["image", "video"]
    width: int
    height: int
    frames: int
    fps: float = 0.0  # 0 for images
    scores: Mapping[str, float] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        """Seconds of video (0 for images)."""
        return self.frames / self.fps if self.kind == "video" else 0.0

    def to_row(self, base: Optional[Path] = None) -> dict[str, Any]:
        """The manifest row; `path` relative to `base` when it lies below it."""
        path = self.path if self.path.is_absolute() else self.path.resolve()
        if base is not None:
            try:
                path = path.relative_to(base)
            except ValueError:
                pass
        row: dict[str, Any] = {"path": path.as_posix(), "caption": self.caption, "kind": self.kind,
                               "width": self.width, "height": self.height, "frames": self.frames,
                               "fps": self.fps}
        if self.scores:
            row["scores"] = dict(self.scores)
        if self.tags:
            row["tags"] = list(self.tags)
        return row


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def record_problems(row: Any) -> Iterator[tuple[str, str]]:
    """(field, problem) for everything wrong with one manifest row."""
    if not isinstance(row, dict):
        yield "record", f"expected an object, got {type(row).__name__}"
        return
    for name in REQUIRED:
        if row.get(name) is None:
            yield name, "missing"
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        yield unknown[0], f"unknown field (fields: {', '.join(REQUIRED + OPTIONAL)})"
    for name in ("path", "caption"):
        if row.get(name) is not None and (not isinstance(row[name], str) or not row[name].strip()):
            yield name, f"expected a non-empty string, got {row[name]!r}"
    kind = row.get("kind")
    if kind is not None and kind not in KINDS:
        yield "kind", f"expected 'image' or 'video', got {kind!r}"
    for name in ("width", "height", "frames"):
        v = row.get(name)
        if v is not None and (not _is_int(v) or v < 1):
            yield name, f"expected a positive integer, got {v!r}"
    fps = row.get("fps")
    if fps is not None and (not _is_number(fps) or fps < 0):
        yield "fps", f"expected a non-negative number, got {fps!r}"
    if kind == "image" and _is_int(row.get("frames")) and row["frames"] != 1:
        yield "frames", f"an image has 1 frame, got {row['frames']}"
    if kind == "video" and not (_is_number(fps) and fps > 0):
        yield "fps", f"a video needs a positive fps, got {fps!r}"
    scores = row.get("scores")
    if scores is not None:
        if not isinstance(scores, dict):
            yield "scores", f"expected an object of name: number, got {scores!r}"
        else:
            for key, v in scores.items():
                if v is not None and not _is_number(v):
                    yield f"scores.{key}", f"expected a finite number, got {v!r}"
    tags = row.get("tags")
    if tags is not None and (not isinstance(tags, list) or
                             not all(isinstance(t, str) for t in tags)):
        yield "tags", f"expected a list of strings, got {tags!r}"


def _record(row: dict[str, Any], base: Path) -> MediaRecord:
    path = Path(row["path"])
    scores = {k: float(v) for k, v in (row.get("scores") or {}).items() if v is not None}
    return MediaRecord(path=path if path.is_absolute() else base / path, caption=row["caption"],
                       kind=row["kind"], width=row["width"], height=row["height"],
                       frames=row["frames"], fps=float(row.get("fps") or 0.0), scores=scores,
                       tags=tuple(row.get("tags") or ()))


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not a readable UTF-8 text file ({e})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"line {number}", ManifestError(f"not valid JSON ({e.msg}, column {e.colno})")


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ManifestError(f"{path}: not a readable Parquet file ({e})") from None
    for number, row in enumerate(rows, start=1):
        # Scores are a Parquet map, which reads back as (name, value) pairs.
        if isinstance(row.get("scores"), list):
            row["scores"] = dict(row["scores"])
        yield f"row {number}", {k: v for k, v in row.items() if v is not None}


def load_manifest(path: str | Path) -> list[MediaRecord]:
    """Every record of a .jsonl or .parquet manifest, validated; raises ManifestError."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ManifestError(f"{path}: unknown manifest format {path.suffix!r} (.jsonl or .parquet)")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _parquet_rows(path)
    base = path.parent.resolve()
    records, problems = [], []
    for where, row in rows:
        if isinstance(row, ManifestError):
            problems.append(f"{where}: {row}")
            continue
        found = [f"{where}: {name}: {problem}" for name, problem in record_problems(row)]
        problems.extend(found)
        if not found:
            records.append(_record(row, base))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ManifestError(f"{path}: {problems[0]}{more}")
    if not records:
        raise ManifestError(f"{path}: the manifest holds no records")
    return records


def write_manifest(records: Iterable[MediaRecord], path: str | Path) -> Path:
    """Write .jsonl or .parquet, paths relative to the manifest's folder where they lie below it;
    written to a temporary name and renamed, so a reader never sees half a manifest."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ManifestError(f"{path}: unknown manifest format {path.suffix!r} (.jsonl or .parquet)")
    rows = [r.to_row(path.parent.resolve()) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Explicit: inferred from the first row alone, a later row's scores or tags would be lost.
        schema = pa.schema([("path", pa.string()), ("caption", pa.string()),
                            ("kind", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                            ("frames", pa.int64()), ("fps", pa.float64()),
                            ("scores", pa.map_(pa.string(), pa.float64())),
                            ("tags", pa.list_(pa.string()))])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    tmp.replace(path)
    return path
