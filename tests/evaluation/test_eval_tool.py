"""`megagoku eval` end to end on a tiny trained run: the table and eval.json, the VBench and
GenEval exports of the evaluated samples, a benchmark's own prompt list, and refusals before any
work."""

import json

import pytest

from megagoku.cli import main
from megagoku.train.trainer import train
from tests.train.test_resume import config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(config(), path)
    return path


def test_eval_scores_and_exports(run_dir, tmp_path, classifier_cache, capsys):
    classifier_cache(config().data)
    out, vbench, geneval = tmp_path / "eval", tmp_path / "vb", tmp_path / "ge"
    args = ["eval", "--run-dir", str(run_dir), "--prompts", "held_out", "--samples", "2",
            "--steps", "2", "--out", str(out), "--upscale", "1"]
    assert main(args + ["--export", "vbench", str(vbench)]) == 0
    printed = capsys.readouterr()
    assert "| video | held_out | 8 |" in printed.out and "| image | seen | 24 |" in printed.out
    assert "fd_shapes3d_video = " in printed.out and "not FVD/FID" in printed.out
    assert "eval video: 8/8 clips" in printed.err
    report = json.loads((out / "eval.json").read_text())
    summary = report["summary"]
    assert summary["video"]["held_out"]["clips"] == 8 and "seen" not in summary["video"]
    assert summary["fd_shapes3d_video"] >= 0 and summary["fd_floor_image"] >= 0
    assert report["samples"][0]["prompt"] == "a red square moving up"
    names = sorted(p.name for p in (vbench / "videos").iterdir())
    assert names[:2] == ["a blue circle moving down-0.mp4", "a blue circle moving down-1.mp4"]
    assert len(names) == 8
    assert (vbench / "prompts.txt").read_text().splitlines()[0] == "a red square moving up"
    info = json.loads((vbench / "full_info.json").read_text())
    assert info[0]["prompt_en"] == "a red square moving up" and "dynamic_degree" in \
        info[0]["dimension"]

    assert main(args + ["--export", "geneval", str(geneval)]) == 0
    folders = sorted(p.name for p in (geneval / "images").iterdir())
    assert folders == [f"{i:05d}" for i in range(12)]
    assert sorted(p.name for p in (geneval / "images" / "00000" / "samples").iterdir()) == \
        ["0000.png", "0001.png"]
    lines = (geneval / "evaluation_metadata.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["prompt"] == "a red circle"
    assert json.load(open(geneval / "images" / "00000" / "metadata.jsonl")) == \
        json.loads(lines[0])


def test_benchmark_prompt_list_export(run_dir, tmp_path, capsys):
    prompts = tmp_path / "all_dimension.txt"
    prompts.write_text("a cat playing piano\na dog running\n")
    out = tmp_path / "vb"
    assert main(["eval", "--run-dir", str(run_dir), "--export", "vbench", str(out),
                 "--benchmark-prompts", str(prompts), "--samples", "2", "--steps", "1",
                 "--upscale", "1"]) == 0
    assert sorted(p.name for p in (out / "videos").iterdir()) == [
        "a cat playing piano-0.mp4", "a cat playing piano-1.mp4", "a dog running-0.mp4",
        "a dog running-1.mp4"]
    assert (out / "prompts.txt").read_text() == prompts.read_text()
    assert not (run_dir / "eval").exists()  # no in-repo scores for a benchmark's prompts


def test_refusals_before_any_work(tmp_path, capsys):
    assert main(["eval", "--run-dir", str(tmp_path), "--samples", "0"]) == 2
    assert "--samples: must be positive, got 0" in capsys.readouterr().err
    assert main(["eval", "--run-dir", str(tmp_path), "--benchmark-prompts", "p.txt"]) == 2
    assert "--benchmark-prompts: needs --export" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path)]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["eval", "--run-dir", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint here" in capsys.readouterr().err
