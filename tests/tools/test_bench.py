"""`megagoku bench kernels` runs every case through both paths and reports them (no timing is
asserted: performance claims live in BENCHMARKS.md, not in tests)."""

import json
import re
from pathlib import Path

import pytest

from megagoku.cli import main
from megagoku.ops import fused, use_fused


def test_bench_kernels_reports_every_case(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "kernels", "--tokens", "96", "--repeats", "1", "--dtype", "fp32",
                 "--dtype", "bf16", "--cold-allocator", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "copy bandwidth:" in printed and "targets (fused >= 2x eager" in printed
    report = json.loads(out.read_text())
    assert len(report["copy_gbps_measured"]) == 29 and report["tokens"] == 96
    shapes = [(r["case"], r["dtype"], r["shape"]) for r in report["results"]]
    assert shapes == [(case, dtype, shape) for dtype in ("fp32", "bf16") for case, shape in (
        ("rmsnorm", "96x1792"), ("rmsnorm", "96x3072"), ("qk-rmsnorm", "96x28x64"),
        ("qk-rmsnorm", "96x48x64"), ("qk-whole", "96x28x64"), ("qk-whole", "96x48x64"),
        ("adaln-layer", "96x1792"), ("adaln-layer", "96x3072"), ("adaln-rms", "96x1792"),
        ("adaln-rms", "96x3072"), ("gate", "96x1792"), ("gate", "96x3072"), ("rope", "96x28x64"),
        ("rope", "96x48x64"))]
    for r in report["results"]:
        assert r["eager_ms"] > 0 and r["fused_ms"] > 0
        assert abs(r["speedup"] - r["eager_ms"] / r["fused_ms"]) < 1e-6 * r["speedup"]
        assert abs(r["copy_fraction"] - r["fused_gbps"] / r["copy_gbps"]) < 1e-6


def test_bench_without_the_kernels_says_why(monkeypatch, capsys):
    monkeypatch.setattr(fused, "_C", None)
    monkeypatch.setattr(fused, "_IMPORT_ERROR", "ModuleNotFoundError: No module named '_C'")
    use_fused.cache_clear()
    try:
        assert main(["bench", "kernels", "--tokens", "8", "--device", "cpu"]) == 2
    finally:
        use_fused.cache_clear()
    err = capsys.readouterr().err
    assert "error: fused kernels cannot run on cpu: megagoku.ops._C is not importable" in err


def test_bench_data_decodes_each_clip_by_each_backend_against_the_reference(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["bench", "data", "--only", "decode", "--clips-dir", str(tmp_path / "clips"),
                 "--source", "96x64@8:1", "--target", "16x16x4:small", "--repeats", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "generating" in printed and "h264_96x64_8fps_1s.mp4" in printed
    rows = {(r["clip"].split("_")[0], r["backend"]): r
            for r in json.loads(out.read_text())["decode"]}
    assert set(rows) == {(c, b) for c in ("h264", "vp9") for b in ("reference", "pyav", "dali")}
    assert "n/a: DALI's CPU decoder" in rows[("h264", "dali")]["note"]
    for key, row in rows.items():
        if key != ("h264", "dali"):
            assert row["frames_per_s"] > 0 and row["peak_mb"] >= 0, (key, row)
            assert row["target"] == "small" and not row["note"]
    for key in (("h264", "pyav"), ("vp9", "pyav"), ("vp9", "dali")):
        assert rows[key]["speedup"] == pytest.approx(
            rows[(key[0], "reference")]["seconds_per_sample"] / rows[key]["seconds_per_sample"])
    # The clips are generated once: a second run finds them.
    assert main(["bench", "data", "--only", "decode", "--clips-dir", str(tmp_path / "clips"),
                 "--source", "96x64@8:1", "--target", "16x16x4", "--repeats", "1"]) == 0
    assert "generating" not in capsys.readouterr().out
    assert main(["bench", "data", "--source", "96x64"]) == 2


@pytest.mark.slow
def test_bench_data_runs_the_loader_with_each_worker_count(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["bench", "data", "--only", "loader", "--clips-dir", str(tmp_path / "clips"),
                 "--loader-source", "96x64@8:2", "--loader-size", "16x16x8", "--tokens", "512",
                 "--steps", "2", "--workers", "0", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["loader"]
    assert [(r["data"], r["workers"]) for r in rows] == [
        ("built-in shapes", None), ("h264_96x64_8fps_2s.mp4", 0), ("h264_96x64_8fps_2s.mp4", 2)]
    for r in rows:
        assert not r["note"] and len(r["wait_per_step"]) == 2 and r["main_peak_mb"] > 0
    assert rows[2]["worker_peak_mb"] > 0


def test_bench_data_opens_a_large_manifest_against_the_json_floor(tmp_path, capsys):
    out = tmp_path / "m.json"
    args = ["bench", "data", "--only", "manifest", "--clips-dir", str(tmp_path / "clips"),
            "--manifest-rows", "300"]
    assert main(args + ["--json", str(out)]) == 0
    r = json.loads(out.read_text())["manifest"]
    assert r["rows"] == 300 and r["mb"] > 0 and 0 < r["open_s"] <= r["first_sample_s"]
    printed = capsys.readouterr().out
    ratio = float(re.search(r"ManifestDataset open [0-9.]+ s \(([0-9.]+)x the floor", printed)[1])
    assert ratio == pytest.approx(r["open_s"] / r["json_floor_s"], rel=0.05, abs=0.1)
    assert main(args[:-2] + ["--manifest-rows", "0"]) == 2


def test_bench_packing_compares_windows_and_bucketing(capsys):
    assert main(["bench", "packing", "--samples", "200", "--window", "1", "--window", "32"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()[2:]}
    padding = {k: float(v.split()[-2].rstrip("%")) for k, v in rows.items()}
    assert set(padding) == {"greedy (window 1)", "first-fit-decreasing w=32", "size bucketing"}
    assert padding["first-fit-decreasing w=32"] < padding["greedy (window 1)"]
    assert padding["first-fit-decreasing w=32"] < padding["size bucketing"]
    assert main(["bench", "packing", "--samples", "50", "--budget", "1000"]) == 2


@pytest.mark.slow
def test_bench_memory_meta_counts_each_rank_without_allocating(tmp_path, capsys):
    """Two gloo ranks build the tiny model on the meta device under ZeRO-3 and count what each
    would materialise: the plan's weights per rank, plus the partitions' padding (under one
    element per tensor)."""
    out = tmp_path / "memory.json"
    config = str(Path(__file__).resolve().parents[2] / "configs/tiny.yaml")
    assert main(["bench", "memory", "--meta", "--config", config, "--nproc", "2",
                 "--set", "parallel.zero_stage=3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    weights = report["plan"]["weights_bytes"]
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    for r in report["ranks"]:
        assert weights <= r["would_materialise_bytes"] <= weights + 4 * 200
    assert "would materialise MiB" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_memory_trains_and_measures_each_rank_and_each_save(tmp_path, capsys):
    """Two gloo ranks train the tiny model for 2 steps under ZeRO-2 with an asynchronous save
    after step 1: each reports its peak above its baseline, and each save what it blocked and
    the resident memory around it (the tiny model's host copies may reuse heap memory already
    resident, so their size is checked at full width: BENCHMARKS.md)."""
    out = tmp_path / "memory.json"
    config = str(Path(__file__).resolve().parents[2] / "configs/tiny.yaml")
    assert main(["bench", "memory", "--config", config, "--nproc", "2", "--steps", "2",
                 "--set", "parallel.zero_stage=2", "--set", "checkpoint.every=1",
                 "--set", "sample.every=0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for r in report["ranks"]:
        assert 0 < r["measured_bytes"] < r["max_rss_bytes"]
        assert [s["step"] for s in r["saves"]] == [1, 2] and all(s["async"] for s in r["saves"])
        for s in r["saves"]:  # measured around the save, in this rank's run
            assert 0 < s["blocked_s"] < 60
            assert r["baseline_bytes"] < s["rss_before_bytes"] <= s["max_rss_before_bytes"]
            assert s["max_rss_before_bytes"] <= s["max_rss_after_bytes"]
        assert r["saves"][0]["max_rss_after_bytes"] <= r["saves"][1]["max_rss_before_bytes"]
    printed = capsys.readouterr().out
    assert "measured/plan" in printed and "save at step 1 (async): training blocked" in printed
    assert "save at step 2 (async)" in printed
