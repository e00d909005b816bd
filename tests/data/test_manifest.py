"""Manifests: JSONL and Parquet round trips, paths relative to the manifest, and a bad record
refused with one line naming the file, the line or row, and the field."""

import json
from pathlib import Path

import pytest

from megagoku.data.manifest import ManifestError, MediaRecord, load_manifest, write_manifest


def records(root: Path) -> list[MediaRecord]:
    return [
        MediaRecord(root / "images/a.png", "a red circle", "image", 16, 16, 1),
        MediaRecord(root / "clips/b.webm", "a blue square moving up", "video", 32, 16, 9, 8.0,
                    {"motion": 3.2, "aesthetic": 5.0}, ("animation",)),
        MediaRecord(root / "clips/c.mp4", "a green triangle moving left", "video", 640, 360, 121,
                    24.0, {}, ("h264", "test")),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_with_relative_paths(tmp_path, suffix):
    original = records(tmp_path.resolve())
    path = write_manifest(original, tmp_path / f"manifest{suffix}")
    assert load_manifest(path) == original
    assert original[1].duration == 9 / 8.0 and original[0].duration == 0.0
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["path"] for r in rows] == ["images/a.png", "clips/b.webm", "clips/c.mp4"]
        assert "scores" not in rows[0] and rows[1]["scores"] == {"motion": 3.2, "aesthetic": 5.0}


def test_paths_resolve_against_the_manifest_folder(tmp_path):
    sub = tmp_path / "data"
    sub.mkdir()
    (sub / "m.jsonl").write_text(json.dumps(
        {"path": "x/clip.mp4", "caption": "c", "kind": "video", "width": 8, "height": 8,
         "frames": 5, "fps": 4}) + "\n\n")  # a blank line is allowed
    (record,) = load_manifest(sub / "m.jsonl")
    assert record.path == (sub / "x/clip.mp4").resolve() and record.fps == 4.0


GOOD = {"path": "a.mp4", "caption": "c", "kind": "video", "width": 8, "height": 8, "frames": 5,
        "fps": 8.0}


@pytest.mark.parametrize("change,message", [
    ({"kind": "movie"}, "line 2: kind: expected 'image' or 'video', got 'movie'"),
    ({"width": 0}, "line 2: width: expected a positive integer, got 0"),
    ({"frames": 2.5}, "line 2: frames: expected a positive integer, got 2.5"),
    ({"fps": None}, "line 2: fps: a video needs a positive fps, got None"),
    ({"kind": "image", "frames": 3, "fps": 0}, "line 2: frames: an image has 1 frame, got 3"),
    ({"caption": ""}, "line 2: caption: expected a non-empty string"),
    ({"scores": {"motion": "fast"}}, "line 2: scores.motion: expected a finite number"),
    ({"tags": "anim"}, "line 2: tags: expected a list of strings"),
    ({"captoin": "typo"}, "line 2: captoin: unknown field"),
])
def test_bad_record_names_file_line_and_field(tmp_path, change, message):
    bad = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert str(e.value).startswith(f"{path}: {message}")
    assert "\n" not in str(e.value)


def test_every_problem_is_counted_and_broken_json_located(tmp_path):
    path = tmp_path / "m.jsonl"
    missing = {k: v for k, v in GOOD.items() if k != "caption"}
    path.write_text(json.dumps(GOOD) + "\n{not json\n" + json.dumps(missing) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl: line 2: not valid JSON .* \(and 1 more "
                                            r"problems\)$"):
        load_manifest(path)


def test_bad_parquet_row_and_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "height": -4}]), path)
    with pytest.raises(ManifestError, match=r"m.parquet: row 2: height: expected a positive "
                                            r"integer, got -4$"):
        load_manifest(path)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="broken.parquet: not a readable Parquet file"):
        load_manifest(tmp_path / "broken.parquet")
    with pytest.raises(ManifestError, match="unknown manifest format '.csv'"):
        load_manifest(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="holds no records"):
        load_manifest(tmp_path / "empty.jsonl")


def test_relative_record_paths_are_written_relative_to_the_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = MediaRecord(Path("sub/clips/a.webm"), "c", "video", 8, 8, 5, 8.0)
    path = write_manifest([record], Path("sub/m.jsonl"))
    assert json.loads(path.read_text())["path"] == "clips/a.webm"
    assert load_manifest(path)[0].path == tmp_path / "sub/clips/a.webm"


@pytest.mark.parametrize("change,message", [
    ({"width": True}, "width: expected a positive integer, got True"),
    ({"fps": float("nan")}, "fps: expected a non-negative number, got nan"),
])
def test_bools_and_nan_are_refused(tmp_path, change, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({**GOOD, **change}) + "\n")
    with pytest.raises(ManifestError, match=f"line 1: {message}"):
        load_manifest(path)


def test_a_binary_file_is_not_a_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match="m.jsonl: not a readable UTF-8 text file"):
        load_manifest(tmp_path / "m.jsonl")
