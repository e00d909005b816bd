"""VBench and GenEval hooks: prompt files in their formats read back, sample folders in the exact
layouts their evaluators read (names, numbering, metadata), and refusals of what they could not
read."""

import json

import av
import pytest
import torch
from PIL import Image

from megagoku.evaluation import benchmarks as bm


def video(t=8, value=0.5):
    v = torch.full((3, t, 16, 16), -1.0)
    v[:, :, 4:8, 4:8] = value
    return v


def test_vbench_prompt_files_read_and_written(tmp_path):
    txt = tmp_path / "all_dimension.txt"
    txt.write_text("A 3D model of a 1800s victorian house.\n\na cat playing piano\n")
    prompts = bm.read_vbench_prompts(txt)
    assert [p.prompt for p in prompts] == ["A 3D model of a 1800s victorian house.",
                                           "a cat playing piano"]
    info = tmp_path / "VBench_full_info.json"
    info.write_text(json.dumps([{"prompt_en": "a cat", "dimension": ["subject_consistency"]},
                                {"prompt_en": "a dog", "dimension": ["color"],
                                 "auxiliary_info": {"color": {"color": "red"}}}]))
    full = bm.read_vbench_prompts(info)
    assert full[1].record["auxiliary_info"] == {"color": {"color": "red"}}
    written = bm.write_vbench_prompts(full, tmp_path / "out" / "p.txt", tmp_path / "out" / "f.json")
    assert written[0].read_text() == "a cat\na dog\n"
    assert json.loads(written[1].read_text()) == json.loads(info.read_text())
    ours = bm.vbench_records(["a red circle moving left"])
    assert ours[0].record == {"prompt_en": "a red circle moving left",
                              "dimension": bm.VBENCH_CUSTOM_DIMENSIONS}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "no prompt_en"}]))
    with pytest.raises(bm.BenchmarkError, match="bad.json: entry 0: no prompt_en"):
        bm.read_vbench_prompts(bad)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(bm.BenchmarkError, match="empty.txt: no prompts"):
        bm.read_vbench_prompts(tmp_path / "empty.txt")


def test_vbench_sample_folder_layout(tmp_path):
    folder = tmp_path / "videos"
    prompt = "A 3D model of a 1800s victorian house."
    for i in range(5):
        bm.write_vbench_sample(folder, prompt, i, video(), fps=8, upscale=2)
    bm.write_vbench_sample(folder, "a-b test-3 x", 0, video())
    names = sorted(p.name for p in folder.iterdir())
    # Exactly the names VBench's standard mode looks up: f"{prompt}-{i}{suffix}", i = 0..4.
    assert names[:5] == [f"{prompt}-{i}.mp4" for i in range(5)]
    assert names[5] == "a-b test-3 x-0.mp4"
    with av.open(str(folder / names[0])) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 8 and frames[0].width == 32
    back = bm.read_vbench_folder(folder)
    assert list(back) == [prompt, "a-b test-3 x"]  # VBench's rule: strip one trailing -<digits>
    assert [p.name for p in back[prompt]] == [f"{prompt}-{i}.mp4" for i in range(5)]
    assert bm.vbench_prompt_from_name("a dog-12.mp4") == "a dog"
    with pytest.raises(bm.BenchmarkError, match="'/'"):
        bm.vbench_video_name("either/or", 0)
    with pytest.raises(bm.BenchmarkError, match="255"):
        bm.vbench_video_name("x" * 260, 0)
    (folder / "prompts.txt").write_text("x")
    with pytest.raises(bm.BenchmarkError, match="videos only"):
        bm.read_vbench_folder(folder)


def test_geneval_prompts_and_folder_layout(tmp_path):
    meta = tmp_path / "evaluation_metadata.jsonl"
    lines = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}],
              "prompt": "a photo of a bench"},
             {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
              "prompt": "a photo of a red car"}]
    meta.write_text("".join(json.dumps(line) + "\n" for line in lines))
    prompts = bm.read_geneval_prompts(meta)
    assert [p.prompt for p in prompts] == ["a photo of a bench", "a photo of a red car"]
    root = tmp_path / "images"
    for i, p in enumerate(prompts):
        bm.write_geneval_prompt(root, i, p, [video(1, 0.2 * k) for k in range(4)], upscale=3)
    assert sorted(p.name for p in root.iterdir()) == ["00000", "00001"]
    folder = root / "00001"
    assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "metadata.jsonl", "samples"]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == \
        ["0000.png", "0001.png", "0002.png", "0003.png"]
    # GenEval reads metadata.jsonl with json.load: one object, the prompt's own line.
    assert json.load(open(folder / "metadata.jsonl")) == lines[1]
    assert Image.open(folder / "samples" / "0000.png").size == (48, 48)
    back = bm.read_geneval_folder(root)
    assert [m for m, _ in back] == lines and [len(s) for _, s in back] == [4, 4]
    out = bm.write_geneval_prompts(prompts, tmp_path / "again.jsonl")
    assert out.read_text() == meta.read_text()
    ours = bm.geneval_records(["a red circle"])[0].record
    assert ours == {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
                    "prompt": "a red circle"}
    meta.write_text('{"tag": "x"}\n')
    with pytest.raises(bm.BenchmarkError, match="line 1: no prompt string"):
        bm.read_geneval_prompts(meta)
    with pytest.raises(bm.BenchmarkError, match="unknown benchmark"):
        bm.read_prompts(meta, "fvd")
