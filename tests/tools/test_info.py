import json
from pathlib import Path

import pytest

from megagoku.cli import main
from megagoku.config import load_model_config
from megagoku.tools.info import flops_per_token, parameter_counts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset,billions", [("goku_2b", 2.0), ("goku_8b", 8.0)])
def test_presets_match_the_paper_parameter_counts(preset, billions):
    counts = parameter_counts(load_model_config(ROOT / f"configs/models/{preset}.yaml"))
    assert abs(counts["total"] / 1e9 - billions) <= 0.05 * billions, counts["total"]
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_parameter_count_equals_the_formula_for_the_blocks():
    cfg = load_model_config(ROOT / "configs/models/goku_2b.yaml")
    d, td = cfg.hidden_size, cfg.text_dim
    counts = parameter_counts(cfg)
    assert counts["blocks.adaln"] == cfg.depth * (6 * d * d + 6 * d)
    assert counts["blocks.mlp"] == cfg.depth * (8 * d * d + 5 * d)
    assert counts["blocks.attn"] == cfg.depth * (4 * d * d + 2 * cfg.head_dim)
    assert counts["blocks.cross_attn"] == cfg.depth * (2 * d * d + 2 * td * d + 2 * cfg.head_dim)


def test_flops_grow_with_sequence_length():
    cfg = load_model_config(ROOT / "configs/models/goku_2b.yaml")
    short, long = flops_per_token(cfg, 1024, 120), flops_per_token(cfg, 65536, 120)
    assert long["forward"] > short["forward"] and long["train"] == 3 * long["forward"]
    # At long sequences the 2 * params rule of thumb plus attention: within a factor of 2.
    assert 2 * 2.0e9 < long["forward"] < 4 * 2.0e9 + 4 * cfg.depth * 65536 * cfg.hidden_size


def test_info_command_prints_json(capsys):
    assert main(["info", "--config", str(ROOT / "configs/models/goku_8b.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "goku-8b" and 7.6e9 < out["parameters"] < 8.4e9
