"""Streaming record files: JSON Lines read one row at a time and appended one result at a time,
so that a curation run over millions of clips never holds a manifest in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

Row = dict[str, Any]


def read_rows(path: Path) -> Iterator[Row]:
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {number}: not valid JSON ({e.msg})") from None


def count_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def write_rows(path: Path, rows: Iterable[Row]) -> int:
    """Write all rows under a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


class Appender:
    """Appends rows to a JSONL file, flushed per result, so that a crash loses at most the file
    being worked on."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()
