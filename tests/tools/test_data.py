"""`megagoku data shapes` writes the built-in data as files with a manifest that loads back."""

from megagoku.cli import main
from megagoku.data.manifest import load_manifest


def test_shapes_files_and_manifest(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path), "--count", "6",
                 "--set", "data.image_fraction=0.5"]) == 0
    records = load_manifest(tmp_path / "manifest.jsonl")
    assert len(records) == 6 and all(r.path.is_file() for r in records)
    assert {r.tags[0] for r in records if r.kind == "video"} == {"vp9", "h264"}
    assert all(r.frames == 1 and r.path.suffix == ".png" for r in records if r.kind == "image")
    assert "wrote" in capsys.readouterr().out
    assert main(["data", "shapes", "--out", str(tmp_path / "x"), "--count", "0"]) == 2
    assert "--count and --fps must be at least 1" in capsys.readouterr().err
