"""Statistics of a curation stage: how many records came in, were kept, and were dropped for
which reason; summaries and histograms (PNG) of every score, with the thresholds drawn on.
Computed by streaming the stage's files, with a bounded reservoir of values per score, so the
report is the same whether the stage ran in one go or was resumed, and costs no memory at scale.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from megagoku.curation.records import read_rows

RESERVOIR = 100_000


class Reservoir:
    """A uniform sample of at most `size` values of a stream, plus its exact count/mean/min/max."""

    def __init__(self, size: int = RESERVOIR, seed: int = 0):
        self.size, self.values, self.count, self.total = size, [], 0, 0.0
        self.low, self.high = float("inf"), float("-inf")
        self.rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            j = self.rng.randrange(self.count)
            if j < self.size:
                self.values[j] = value

    def summary(self) -> dict:
        if not self.count:
            return {"count": 0}
        p = np.percentile(self.values, [5, 50, 95])
        return {"count": self.count, "mean": round(self.total / self.count, 4),
                "min": round(self.low, 4), "max": round(self.high, 4),
                "p5": round(float(p[0]), 4), "p50": round(float(p[1]), 4),
                "p95": round(float(p[2]), 4)}


def stage_stats(stage_dir: Path, inputs: int, kept_file: Optional[Path] = None
                ) -> tuple[dict, dict[str, tuple[list, list]]]:
    """(stats, {score: (kept values, dropped values)}) from the stage's records.jsonl (or
    `kept_file`) and dropped.jsonl."""
    kept, reasons, seconds = 0, Counter(), 0.0
    scores: dict[str, tuple[Reservoir, Reservoir]] = {}
    for path, is_kept in ((kept_file or stage_dir / "records.jsonl", True),
                          (stage_dir / "dropped.jsonl", False)):
        for row in read_rows(path):
            if is_kept:
                kept += 1
                if row.get("kind") == "video" and "end" in row:
                    seconds += row["end"] - row["start"]
            else:
                reasons[row["reason"]] += 1
            for key, value in (row.get("scores") or {}).items():
                pair = scores.setdefault(key, (Reservoir(), Reservoir(seed=1)))
                pair[0 if is_kept else 1].add(float(value))
    stats = {"stage": stage_dir.name, "inputs": inputs, "kept": kept,
             "dropped": dict(sorted(reasons.items())), "kept_video_seconds": round(seconds, 2),
             "scores": {k: {"kept": a.summary(), "dropped": b.summary()}
                        for k, (a, b) in sorted(scores.items())}}
    return stats, {k: (a.values, b.values) for k, (a, b) in scores.items()}


def score_histogram(path: Path, title: str, kept: list[float], dropped: list[float],
                    lines: Iterable[Optional[float]] = ()) -> Path:
    """Stacked histogram of a score, kept and dropped records, thresholds as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    values = [v for v in (kept, dropped) if v]
    if values:
        ax.hist([kept, dropped], bins=30, stacked=True, label=["kept", "dropped"],
                color=["tab:green", "tab:red"])
    for line in lines:
        if line is not None:
            ax.axvline(line, color="black", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_ylabel("records")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_stats(stage_dir: Path, inputs: int, thresholds: dict[str, tuple],
                kept_file: Optional[Path] = None) -> dict:
    """stats.json and one histogram per score; returns the stats."""
    stats, values = stage_stats(stage_dir, inputs, kept_file)
    for name, (kept, dropped) in sorted(values.items()):
        score_histogram(stage_dir / f"hist_{name}.png", f"{stage_dir.name}: {name}", kept,
                        dropped, thresholds.get(name, ()))
    (stage_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def funnel_markdown(stats: list[dict]) -> str:
    """The run's funnel as a Markdown table: one row per stage."""
    lines = ["| stage | in | kept | dropped (reason: count) |", "|---|---:|---:|---|"]
    for s in stats:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['inputs']} | {s['kept']} | {reasons} |")
    return "\n".join(lines) + "\n"
