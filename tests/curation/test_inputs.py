"""What `--input` names: a folder (with sidecar captions), a .txt list or a .jsonl list; shards
that together take every input exactly once; bad lists stop with the file, line and field."""

import json

import numpy as np
import pytest
from PIL import Image

from megagoku.curation.inputs import InputError, read_inputs


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def test_a_folder_is_walked_in_order_with_sidecar_captions(tmp_path):
    image(tmp_path / "b" / "two.png")
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a black square\n")
    (tmp_path / "notes.md").write_text("not media")
    rows = list(read_inputs(tmp_path))
    assert [r["id"] for r in rows] == ["000000_a", "000001_two"]
    assert rows[0]["caption"] == "a black square" and "caption" not in rows[1]
    assert rows[0]["path"] == rows[0]["source"] == str(tmp_path / "a.png")


def test_a_jsonl_list_keeps_captions_timed_captions_and_tags(tmp_path):
    timed = [{"start": 0, "end": 2.5, "text": "a cat"}]
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"path": "v.mp4", "captions": timed, "tags": ["animals"]}) + "\n"
        + json.dumps({"path": "/abs/w.mp4", "caption": "a dog"}) + "\n")
    a, b = read_inputs(tmp_path / "list.jsonl")
    assert a["path"] == str(tmp_path / "v.mp4") and a["timed_captions"] == timed
    assert a["tags"] == ["animals"] and b["path"] == "/abs/w.mp4" and b["caption"] == "a dog"


def test_shards_take_every_input_exactly_once(tmp_path):
    (tmp_path / "list.txt").write_text("\n".join(f"v{i}.mp4" for i in range(11)) + "\n# note\n")
    everything = [r["id"] for r in read_inputs(tmp_path / "list.txt")]
    shards = [[r["id"] for r in read_inputs(tmp_path / "list.txt", (i, 3))] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(everything) and len(everything) == 11
    assert [len(s) for s in shards] == [4, 4, 3]


@pytest.mark.parametrize("line, message", [
    ('{"path": "a.mp4", "tag": ["x"]}', "line 2: tag: unknown field"),
    ('{"caption": "no path"}', "line 2: path: expected a non-empty string"),
    ('{"path": "a.mp4", "captions": [{"start": 0, "text": "x"}]}', "line 2: captions: expected"),
    ('{"path": "a.mp4", "tags": "x"}', "line 2: tags: expected a list of strings"),
    ('{"path": "a.mp4"', "line 2: not valid JSON"),
])
def test_a_bad_line_names_the_file_the_line_and_the_field(tmp_path, line, message):
    path = tmp_path / "list.jsonl"
    path.write_text('{"path": "ok.mp4"}\n' + line + "\n")
    with pytest.raises(InputError) as e:
        list(read_inputs(path))
    assert str(e.value).startswith(f"{path}: {message}")


def test_a_missing_input_or_unknown_list_type_is_refused(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        list(read_inputs(tmp_path / "nope"))
    (tmp_path / "list.csv").write_text("a.mp4\n")
    with pytest.raises(InputError, match="a folder, a .txt list or a .jsonl list"):
        list(read_inputs(tmp_path / "list.csv"))
