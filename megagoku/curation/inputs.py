"""What `megagoku curate --input` names: a folder of media (walked in sorted order; a `NAME.txt`
beside `NAME.mp4` is its caption), a `.txt` list of paths, or a `.jsonl` list of objects:

    {"path": "raw/a.mp4", "caption": "...", "tags": ["animals"],
     "captions": [{"start": 0.0, "end": 5.0, "text": "..."}, ...]}

(`captions` are timed captions, as datasets such as Panda-70M ship them: each clip takes the one
that overlaps it most.) Paths are relative to the list's folder. Every input gets a stable id
from its position, and shard i of N takes the inputs whose position is i modulo N, so that a
source and all its clips live in one shard.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Optional

from megagoku.curation.media import media_kind
from megagoku.curation.records import read_rows

FIELDS = ("path", "caption", "captions", "tags")


class InputError(ValueError):
    """An input list that cannot be read; the message names the file, the line and the field."""


def _media_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and media_kind(path) is not None:
            yield path


def _check(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise InputError(f"{where}: {unknown[0]}: unknown field (fields: {', '.join(FIELDS)})")
    if not isinstance(row.get("path"), str) or not row["path"].strip():
        raise InputError(f"{where}: path: expected a non-empty string, got {row.get('path')!r}")
    if "caption" in row and not isinstance(row["caption"], str):
        raise InputError(f"{where}: caption: expected a string, got {row['caption']!r}")
    timed = row.get("captions")
    if timed is not None:
        ok = isinstance(timed, list) and all(
            isinstance(c, dict) and isinstance(c.get("text"), str)
            and all(isinstance(c.get(k), (int, float)) for k in ("start", "end")) for c in timed)
        if not ok:
            raise InputError(f"{where}: captions: expected a list of "
                             "{start: seconds, end: seconds, text: string}")
    tags = row.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise InputError(f"{where}: tags: expected a list of strings, got {tags!r}")
    return row


def _entries(source: Path) -> Iterator[dict]:
    if source.is_dir():
        for path in _media_files(source):
            row = {"path": str(path)}
            sidecar = path.with_suffix(".txt")
            if sidecar.is_file():
                row["caption"] = sidecar.read_text(encoding="utf-8").strip()
            yield row
    elif source.suffix == ".jsonl":
        for number, row in enumerate(_jsonl_rows(source), start=1):
            row = _check(row, f"{source}: line {number}")
            yield {**row, "path": str(source.parent / row["path"])}
    elif source.suffix == ".txt":
        for line in source.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                yield {"path": str(source.parent / line.strip())}
    else:
        raise InputError(f"{source}: expected a folder, a .txt list or a .jsonl list")


def _jsonl_rows(path: Path) -> Iterator[Any]:
    try:
        yield from read_rows(path)
    except ValueError as e:
        raise InputError(str(e)) from None


def _stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:40]


def read_inputs(source: str | Path, shard: Optional[tuple[int, int]] = None) -> Iterator[dict]:
    """The records that enter the pipeline, in input order (this shard's only)."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    index, count = shard or (0, 1)
    for position, row in enumerate(_entries(source)):
        if position % count != index:
            continue
        out = {"id": f"{position:06d}_{_stem(row['path'])}", "path": row["path"],
               "source": row["path"]}
        if row.get("caption"):
            out["caption"] = row["caption"]
        if row.get("captions"):
            out["timed_captions"] = row["captions"]
        if row.get("tags"):
            out["tags"] = row["tags"]
        yield out
