"""`megagoku curate` end to end on the generated demo videos, whose content is known
(curation/synthetic.py): hard cuts and a crossfade are found where they are, the still shot fails
the motion filter, the shaking one is too fast, burnt-in text fails OCR, the dull scene fails the
aesthetic filter, the repeated scene is removed as a duplicate, the long scene is cut to the cap,
the short and corrupt files are dropped with their reasons, and the manifest loads for training.
Then: an interrupted stage resumes to the same result, and bad input stops with one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megagoku.config.curate import load_curate_config
from megagoku.curation import pipeline
from megagoku.curation.media import read_frames
from megagoku.curation.records import read_rows
from megagoku.curation.stages import FilterStage
from megagoku.curation.synthetic import write_demo_inputs
from megagoku.data.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "curate" / "tiny.yaml"
FPS = 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    inputs = write_demo_inputs(root / "in")
    cfg = load_curate_config(TINY)
    stats = pipeline.run(cfg, inputs, root / "out", emit=lambda line: None)
    truth = json.loads((root / "in" / "truth.json").read_text())
    return root / "out", inputs, truth, stats


def same_records(mine: list[dict], theirs: list[dict]) -> None:
    """Equal records, scores to 1e-2: x264 does not re-encode a clip to the same bytes every
    time (a few pixels differ by a few levels), so a clip's scores move in the 4th digit."""
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        sa, sb = a.pop("scores", {}), b.pop("scores", {})
        assert a == b
        assert sa.keys() == sb.keys() and all(abs(sa[k] - sb[k]) < 1e-2 for k in sa), (sa, sb)


def rows(out: Path, stage: str, name: str = "records.jsonl") -> list[dict]:
    return list(read_rows(out / stage / name))


def by_id(items):
    return {r["id"]: r for r in items}


def test_cuts_are_found_where_they_are(demo):
    out, _, truth, _ = demo
    clips = [r for r in rows(out, "split") if r["id"].startswith("000000_cuts.")]
    starts = sorted(r["start"] for r in clips)
    # The hard cut starts a clip within a frame of where it is.
    (cut,) = truth["cuts"]["cuts"]
    assert min(abs(s - cut) for s in starts) <= 1 / FPS + 1e-6, starts
    # The crossfade is cut out: no kept clip spans its middle, and its frames end up in a piece
    # too short to keep.
    (fade,) = truth["cuts"]["fades"]
    middle = sum(fade) / 2
    assert not any(r["start"] < middle < r["end"] for r in clips), clips
    short = [r for r in rows(out, "split", "dropped.jsonl") if r["id"].startswith("000000_cuts.")]
    assert [r["reason"] for r in short] == ["clip_too_short"]
    assert fade[0] - 1 <= short[0]["start"] and short[0]["end"] <= fade[1] + 1
    # Each clip took the timed caption of its scene.
    captions = [r["caption"] for r in sorted(clips, key=lambda r: r["start"])]
    assert captions == [c["text"] for c in truth["cuts"]["captions"]]


def test_every_scene_becomes_clips_of_the_right_length(demo):
    out, _, truth, _ = demo
    split = rows(out, "split")
    long = [r for r in split if r["id"].startswith("000004_long.")]
    assert [(r["start"], r["end"]) for r in long] == [(0.0, 7.0), (7.0, 14.0)]  # cap 8 s: 2 x 7
    for r in split:
        if r["kind"] == "video":
            frames, _ = read_frames(Path(r["path"]))
            assert len(frames) == r["frames"] == round((r["end"] - r["start"]) * FPS), r["id"]
            assert r["end"] - r["start"] <= 8.0 + 1e-6


def test_filters_drop_what_they_should_and_nothing_else(demo):
    out, _, _, _ = demo
    reasons = {r["id"]: r["reason"] for r in rows(out, "filter", "dropped.jsonl")}
    assert reasons == {"000001_motion.000": "static", "000001_motion.002": "too_fast",
                       "000002_text.001": "text", "000005_dull.000": "low_aesthetic"}
    kept = by_id(rows(out, "filter"))
    assert all(r["scores"]["text"] < 0.02 for r in kept.values())
    assert all(0.3 <= r["scores"]["motion"] <= 10 for r in kept.values() if r["kind"] == "video")
    dropped = by_id(rows(out, "filter", "dropped.jsonl"))
    assert dropped["000002_text.001"]["scores"]["text"] > 0.05
    assert dropped["000001_motion.000"]["scores"]["motion"] < 0.1


def test_the_repeated_scene_is_removed_keeping_the_better_copy(demo):
    out, _, _, _ = demo
    (dup,) = rows(out, "dedup", "dropped.jsonl")
    assert dup["reason"] == "duplicate"
    first, third = "000003_duplicate.000", "000003_duplicate.002"
    assert dup["id"] in (first, third)
    kept = by_id(rows(out, "dedup"))
    twin = kept[third if dup["id"] == first else first]
    assert round(twin["scores"]["aesthetic"], 1) >= round(dup["scores"]["aesthetic"], 1)
    assert "000003_duplicate.001" in kept  # the different scene between them stays


def test_unreadable_and_short_files_are_dropped_with_their_reason(demo):
    out, _, _, stats = demo
    reasons = {Path(r["path"]).name: r["reason"] for r in rows(out, "probe", "dropped.jsonl")}
    assert reasons == {"short.mp4": "too_short", "broken.mp4": "unreadable"}
    funnel = {s["stage"]: s for s in stats}
    assert funnel["probe"]["inputs"] == 10 and funnel["probe"]["kept"] == 8
    for stage in ("filter", "dedup", "caption"):  # one record in, one record out or dropped
        s = funnel[stage]
        assert s["inputs"] == s["kept"] + sum(s["dropped"].values()), s
    assert (out / "filter" / "hist_motion.png").stat().st_size > 1000
    assert "| filter | 16 | 12 |" in (out / "report.md").read_text()


def test_balancing_moves_towards_the_target_and_the_manifest_loads(demo):
    out, _, _, _ = demo
    weights = json.loads((out / "balance" / "weights.json").read_text())
    before, after = weights["before"], weights["after"]
    assert before == {"circle": 5, "square": 4, "triangle": 2}  # zero-shot over the captions

    def spread(counts):
        return max(counts.values()) / min(counts.values())

    assert spread(after) < spread(before)
    records = load_manifest(out / "manifest.jsonl")
    assert len(records) == sum(after.values())
    assert {r.tags[0] for r in records} == {"circle", "square", "triangle"}
    for r in records:
        assert r.path.is_file()
        assert r.kind == "image" or r.scores["motion"] > 0.3


def test_an_interrupted_stage_resumes_to_the_same_result(demo, tmp_path, monkeypatch):
    out, inputs, _, _ = demo
    cfg = load_curate_config(TINY)
    calls = {"n": 0}
    original = FilterStage.process

    def crash_on_the_fifth(self, row):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # a kill: nothing is caught
        return original(self, row)

    monkeypatch.setattr(FilterStage, "process", crash_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, inputs, tmp_path, emit=lambda line: None)
    assert not (tmp_path / "filter" / "DONE").exists()
    assert len((tmp_path / "filter" / "processed.txt").read_text().split()) == 4
    # A row of an input that was never marked done (written before the crash) is discarded.
    with open(tmp_path / "filter" / "records.jsonl", "a") as f:
        f.write(json.dumps({"id": "half", "_from": "never-finished"}) + "\n")
    monkeypatch.setattr(FilterStage, "process", original)
    lines = []
    pipeline.run(cfg, inputs, tmp_path, emit=lines.append)
    assert "curate filter: resuming, 4 of 16 inputs already done" in lines
    assert calls["n"] == 5  # the first four were not scored again
    mine = [dict(r, path=Path(r["path"]).name) for r in read_rows(tmp_path / "manifest.jsonl")]
    theirs = [dict(r, path=Path(r["path"]).name) for r in read_rows(out / "manifest.jsonl")]
    same_records(mine, theirs)


def test_bad_inputs_and_configs_stop_with_one_line(tmp_path):
    bad = tmp_path / "inputs.jsonl"
    bad.write_text('{"path": "a.mp4"}\n{"path": "b.mp4", "capton": "typo"}\n')
    proc = subprocess.run([sys.executable, "-m", "megagoku", "curate", "--input", str(bad),
                           "--out", str(tmp_path / "out"), "--config", str(TINY)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: line 2: capton: unknown field (fields: path, caption, captions, tags)")
    proc = subprocess.run([sys.executable, "-m", "megagoku", "curate", "--input", str(bad),
                           "--out", str(tmp_path / "out"), "--set", "filter.min_motion=-1",
                           "--set", "filter.max_motion=-2"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: <defaults>: filter.max_motion: -2.0 is below min_motion -1.0")
    assert not (tmp_path / "out").exists()  # nothing was started


def test_merge_refuses_unfinished_shards(tmp_path):
    cfg = load_curate_config(TINY)
    (pipeline.shard_dir(tmp_path, 0, 2) / "caption").mkdir(parents=True)
    (pipeline.shard_dir(tmp_path, 0, 2) / "caption" / "DONE").write_text("")
    with pytest.raises(ValueError, match="1 of 2 shards unfinished"):
        pipeline.merge(cfg, tmp_path)


@pytest.mark.slow
def test_shards_and_workers_give_the_same_manifest(demo, tmp_path):
    """Two shards (one with 2 worker processes), merged, give the one-process run's records."""
    out, inputs, _, _ = demo
    cfg = load_curate_config(TINY)
    pipeline.run(cfg, inputs, tmp_path, shard=(0, 2), emit=lambda line: None)
    pipeline.run(load_curate_config(TINY, ["workers=2"]), inputs, tmp_path, shard=(1, 2),
                 emit=lambda line: None)
    pipeline.merge(cfg, tmp_path, emit=lambda line: None)

    def records(manifest: Path) -> list[dict]:
        # Shards list their clips in shard order: compare in path order.
        rows = [dict(r, path=Path(r["path"]).parent.name + "/" + Path(r["path"]).name)
                for r in read_rows(manifest)]
        return sorted(rows, key=lambda r: r["path"])

    same_records(records(tmp_path / "manifest.jsonl"), records(out / "manifest.jsonl"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["kept"] for s in report] == [s["kept"] for s in demo[3]]


@pytest.mark.slow
def test_the_curated_manifest_trains(demo, tmp_path):
    out, _, _, _ = demo
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "megagoku", "train", "--config", str(ROOT / "configs/tiny.yaml"),
         "--run-dir", str(run_dir), "--set", "data.kind=manifest",
         "--set", f"data.manifest={out / 'manifest.jsonl'}", "--set", "train.steps=3",
         "--set", "train.log_every=1", "--set", "model.depth=2",
         "--set", "data.tokens_per_step=512", "--set", "train.max_minutes=0"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.slow
def test_model_backends_run_through_the_pipeline(demo, tmp_path, dino_dir, clip_dir,
                                                 captioner_dir):
    """DINOv2 features for the split, the LAION head over CLIP for aesthetics and an
    image-to-text model for captions, all from local directories (tiny random ones here)."""
    import torch

    from megagoku.curation.aesthetic import LaionAestheticHead

    out, inputs, truth, _ = demo
    head = tmp_path / "head.pth"
    torch.manual_seed(0)
    torch.save(LaionAestheticHead(16).state_dict(), head)
    subset = tmp_path / "inputs.jsonl"
    lines = inputs.read_text().splitlines()
    subset.write_text("\n".join(line.replace('"raw/', f'"{inputs.parent}/raw/')
                                for line in lines if "cuts.mp4" in line or "still_0" in line))
    cfg = load_curate_config(TINY, [
        "split.features=dinov2", f"split.model_dir={dino_dir}", "split.similarity=0.01",
        "filter.aesthetic=laion", f"filter.clip_dir={clip_dir}", f"filter.head_path={head}",
        "filter.min_aesthetic=null", "filter.min_motion=null", "filter.max_motion=null",
        "filter.max_text_coverage=null",
        "caption.sources=[model, existing]", "caption.strategy=join",
        f"caption.model_dir={captioner_dir}", "balance.enabled=false"])
    pipeline.run(cfg, subset, tmp_path / "out", emit=lambda line: None)
    records = rows(tmp_path / "out", "caption")
    clips = [r for r in records if r["kind"] == "video"]
    # A similarity threshold of 0.01 does not cut: only the hard cut splits, and the 8 s cap
    # halves the 8.5 s after it.
    assert [(r["start"], r["end"]) for r in clips] == [(0.0, 5.0), (5.0, 9.25), (9.25, 13.5)]
    assert all(r["fine_cuts"] == 0 for r in clips)
    heuristic = {r["id"]: r["scores"]["aesthetic"] for r in rows(out, "filter")}
    for r in records:
        model_caption = r["captions"]["model"]
        assert model_caption and r["caption"].startswith(model_caption.rstrip(".") + ".")
        existing = r["caption"][len(model_caption.rstrip(".")) + 2:]
        assert existing.rstrip(".") in {c["text"] for c in truth["cuts"]["captions"]} | {
            "a photo of a blue triangle over a textured background"}
        assert r["scores"]["aesthetic"] != heuristic.get(r["id"])  # the LAION head's, not ours
