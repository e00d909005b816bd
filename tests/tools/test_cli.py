"""The command line end to end: train -> sample, and errors that stop before any work."""

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def megagoku(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "megagoku.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"megagoku {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def test_bad_config_stops_with_one_line_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    proc = megagoku("train", "--config", "configs/tiny.yaml", "--set", "model.num_heads=3",
                    "--run-dir", str(run_dir), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: configs/tiny.yaml: model.num_heads: 3 does not divide hidden_size 128")
    assert not run_dir.exists()


def test_text_width_mismatch_is_a_config_error(tmp_path):
    proc = megagoku("train", "--config", "configs/tiny.yaml", "--set", "model.text_dim=512",
                    "--run-dir", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "model.text_dim: 512 differs from the width 384" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_sample_rejects_bad_options_before_loading_anything(tmp_path, capsys):
    from megagoku.cli import main

    assert main(["sample", "--checkpoint", str(tmp_path), "--prompt", "x",
                 "--out", str(tmp_path / "clip.avi")]) == 2
    assert "clip.avi: unknown format '.avi'" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompt", "x", "--frames", "0",
                 "--out", str(tmp_path / "clip.gif")]) == 2
    assert "--frames: must be positive, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_sample_every_format(tmp_path):
    run_dir = tmp_path / "run"
    megagoku("train", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
             "--set", "train.steps=20", "--set", "train.log_every=5", "--set", "model.depth=1")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    for name in ("v.gif", "v.mp4", "i.png"):
        megagoku("sample", "--checkpoint", str(run_dir), "--prompt", "a red circle moving left",
                 "--steps", "3", "--out", str(tmp_path / name))
    gif = Image.open(tmp_path / "v.gif")
    assert gif.n_frames == 8 and gif.size == (128, 128)
    with av.open(str(tmp_path / "v.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 8 and frames[0].width == 128
    assert Image.open(tmp_path / "i.png").size == (128, 128)
    proc = megagoku("sample", "--checkpoint", str(tmp_path / "nothing"), "--prompt", "x",
                    "--out", str(tmp_path / "x.gif"), check=False)
    assert proc.returncode == 2 and "no checkpoint here" in proc.stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_training_on_files_that_are_all_unreadable_ends_in_one_line(tmp_path, workers):
    # Issue 22, case 7: was a RuntimeError traceback.
    rows = [{"path": f"gone{i}.mp4", "caption": "a red circle moving up", "kind": "video",
             "width": 16, "height": 16, "frames": 8, "fps": 8} for i in range(3)]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = megagoku("train", "--config", "configs/tiny.yaml", "--set", "data.kind=manifest",
                    "--set", f"data.manifest={manifest}", "--set", "data.image_fraction=null",
                    "--set", f"data.num_workers={workers}", "--set", "train.steps=2",
                    "--run-dir", str(tmp_path / "run"), check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: data: 100 samples in a row could not be read (up to index 99) (skipped so far: "
        "100 missing): the data is broken, not a few files; the warnings above name each file")
