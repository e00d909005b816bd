import json
from pathlib import Path

import pytest

from megagoku.cli import main
from megagoku.config import load_model_config
from megagoku.models.flops import flops_per_token
from megagoku.tools.info import parameter_counts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset,billions", [("goku_2b", 2.0), ("goku_8b", 8.0)])
def test_presets_match_the_paper_parameter_counts(preset, billions):
    counts = parameter_counts(load_model_config(ROOT / f"configs/models/{preset}.yaml"))
    assert abs(counts["total"] / 1e9 - billions) <= 0.05 * billions, counts["total"]
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_parameter_count_equals_the_formula_for_the_blocks():
    """Goku's released block: Q and K gains heads x head_dim (= d) wide, a gain before the MLP;
    the earlier megagoku block: one head_dim gain shared by the heads, none before the MLP."""
    earlier = ["model.attn_norm=rms", "model.qk_norm=per_head", "model.mlp_norm_gain=false",
               "model.modulation_fp32=false"]
    for overrides, qk, norm3 in (([], "d", 1), (earlier, "head_dim", 0)):
        cfg = load_model_config(ROOT / "configs/models/goku_2b.yaml", overrides)
        d, td = cfg.hidden_size, cfg.text_dim
        gain = d if qk == "d" else cfg.head_dim
        counts = parameter_counts(cfg)
        assert counts["blocks.adaln"] == cfg.depth * (6 * d * d + 6 * d)
        assert counts["blocks.mlp"] == cfg.depth * (8 * d * d + 5 * d)
        assert counts["blocks.attn"] == cfg.depth * (4 * d * d + 2 * gain)
        assert counts["blocks.cross_attn"] == cfg.depth * (2 * d * d + 2 * td * d + 2 * gain)
        assert counts.get("blocks.norm3", 0) == norm3 * cfg.depth * d


def test_flops_equal_twice_the_per_token_weights_plus_attention():
    """Counted independently from the meta model: 2 FLOPs per weight of every per-token linear
    layer, plus 4 * N * dim per block for self-attention scores and values."""
    cfg = load_model_config(ROOT / "configs/models/goku_2b.yaml")
    from megagoku.models import build_model

    model = build_model(cfg, device="meta")
    per_token = ("patch_embed.weight", ".attn.qkv.weight", ".attn.proj.weight",
                 ".cross_attn.q.weight", ".cross_attn.proj.weight", ".mlp.fc1.weight",
                 ".mlp.fc2.weight", "final.linear.weight")
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith(per_token))
    n = 1 << 20  # long enough that per-sample work (adaLN, caption keys) vanishes per token
    expected = 2 * weights + cfg.depth * 4 * n * cfg.hidden_size
    flops = flops_per_token(cfg, n, text_len=0)
    assert abs(flops["forward"] / expected - 1) < 1e-3
    assert flops["train"] == 3 * flops["forward"]
    with_text = flops_per_token(cfg, n, text_len=120)["forward"] - flops["forward"]
    assert abs(with_text / (cfg.depth * 4 * 120 * cfg.hidden_size) - 1) < 0.01


def test_info_command_prints_json(capsys):
    assert main(["info", "--config", str(ROOT / "configs/models/goku_8b.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "goku-8b" and 7.6e9 < out["parameters"] < 8.4e9


def test_memory_plan_divides_what_each_layout_shards(capsys):
    cfg = ROOT / "configs/models/goku_2b.yaml"
    assert main(["info", "--config", str(cfg), "--plan", "--gpus", "8", "--zero", "0"]) == 0
    plain = json.loads(capsys.readouterr().out)["memory_plan_per_gpu"]
    total = parameter_counts(load_model_config(cfg))["total"]
    assert plain["weights_bytes"] == plain["grads_bytes"] == 4 * total
    assert plain["optimizer_bytes"] == 8 * total
    assert main(["info", "--config", str(cfg), "--plan", "--gpus", "16", "--tp", "2", "--sp", "2",
                 "--zero", "3", "--checkpointing", "full"]) == 0
    split = json.loads(capsys.readouterr().out)["memory_plan_per_gpu"]
    assert split["data_parallel"] == 4
    # TP halves the split weights (nearly all of them); ZeRO-3 shards over DP x SP = 8.
    assert 4 * total / 16 < split["weights_bytes"] < 4 * total / 15
    assert split["activations_bytes"] < plain["activations_bytes"] / 10


def test_memory_plan_rejects_an_impossible_layout(capsys):
    assert main(["info", "--config", str(ROOT / "configs/models/goku_2b.yaml"), "--plan",
                 "--gpus", "6", "--tp", "4"]) == 2
    assert "--gpus 6 is not divisible by --tp 4" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--seq-len", "--gpus"])
def test_a_zero_size_is_one_line(option, capsys):
    """Issue 22, case 15: `info --seq-len 0` divided by zero."""
    assert main(["info", "--config", str(ROOT / "configs/tiny.yaml"), option, "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {option}: must be at least 1, got 0"]
