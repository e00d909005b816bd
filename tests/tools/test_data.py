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


def test_a_used_data_folder_is_refused_or_replaced_whole(tmp_path, capsys):
    """Issue 22, case 4: writing fewer samples into a data folder must not cut its manifest and
    leave the old clips behind."""
    assert main(["data", "shapes", "--out", str(tmp_path), "--count", "8"]) == 0
    capsys.readouterr()
    assert main(["data", "shapes", "--out", str(tmp_path), "--count", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {tmp_path}: already holds manifest.jsonl, clips, images; pass "
                   "--overwrite to replace them, or choose another folder"]
    assert len(load_manifest(tmp_path / "manifest.jsonl")) == 8  # untouched
    assert main(["data", "shapes", "--out", str(tmp_path), "--count", "3", "--overwrite"]) == 0
    records = load_manifest(tmp_path / "manifest.jsonl")
    on_disk = sorted(p for folder in ("clips", "images") if (tmp_path / folder).is_dir()
                     for p in (tmp_path / folder).iterdir())
    assert len(records) == 3 and on_disk == sorted(r.path for r in records)


def test_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    """Issue 22, case 15: `data shapes --out FILE`."""
    file = tmp_path / "afile"
    file.write_text("x")
    assert main(["data", "shapes", "--out", str(file), "--count", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {file}: is a file, not a folder"]
    assert main(["data", "shapes", "--out", str(file / "below"), "--count", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {file / 'below'}: cannot write there (Not a directory)"]
