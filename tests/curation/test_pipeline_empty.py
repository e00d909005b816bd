"""`megagoku curate` where every clip is filtered out (issue 22, case 16): an empty manifest and
the funnel that says where everything went, not an error about the category chart."""

import json
from pathlib import Path

from megagoku.cli import main
from megagoku.curation.synthetic import Scene, render_source

ROOT = Path(__file__).resolve().parents[2]


def test_everything_filtered_out_gives_the_empty_manifest_and_the_funnel(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    render_source(raw / "a.mp4", [Scene(5, 1, "circle", "red")])
    out = tmp_path / "out"
    assert main(["curate", "--config", str(ROOT / "configs/curate/tiny.yaml"),
                 "--set", "filter.min_aesthetic=9.9", "--input", str(raw),
                 "--out", str(out)]) == 0
    assert (out / "manifest.jsonl").read_text() == ""
    funnel = {s["stage"]: s for s in json.loads((out / "report.json").read_text())}
    assert funnel["filter"]["kept"] == 0 and funnel["export"]["kept"] == 0
    assert "| filter | 1 | 0 | low_aesthetic: 1 |" in (out / "report.md").read_text()
    assert "0 records" in capsys.readouterr().out
