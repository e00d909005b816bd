"""`megagoku bench step`: one training step of ours and of diffusers' Wan at the same size runs
and is reported, and the FLOPs its TFLOP/s and MFU divide by are the model's (no timing is
asserted: performance claims live in BENCHMARKS.md, not in tests)."""

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from megagoku.cli import main
from megagoku.config import load_model_config
from megagoku.models.flops import pack_train_flops
from megagoku.tools import bench_step
from megagoku.tools.bench_peer import peer_batch


def test_pack_flops_match_the_counted_matmuls():
    """torch's FLOP counter sees every matmul of a forward but not the CPU attention kernel:
    with the attention products added by hand (4 n^2 d self, 4 n t d cross per block and sample)
    and the timestep MLP taken out (the formula leaves it out), it is exactly the formula's
    forward, a third of the step that bench step divides by."""
    cfg = load_model_config("configs/models/tiny.yaml", ["depth=2"])
    lengths, text = [96, 160], 8
    pack = bench_step.make_pack(cfg, lengths, text, seed=0)
    system = bench_step.ours(cfg, pack, torch.device("cpu"))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        system.loss()
    d = cfg.hidden_size
    attention = sum(cfg.depth * (4 * n * n * d + 4 * n * text * d) for n in lengths)
    timestep_mlp = 2 * len(lengths) * (cfg.timestep_freq_dim * d + d * d)
    counted = counter.get_total_flops() + attention - timestep_mlp
    assert counted == round(pack_train_flops(cfg, lengths, [text] * len(lengths)) / 3)


def test_mixed_lengths_differ_in_duration_only():
    lengths = bench_step.sample_lengths(4096, 4, "mixed", seed=3)
    assert sum(lengths) == 4096 and len(set(lengths)) > 1
    frame = bench_step.frame_tokens(1024)
    assert frame == 128 and all(n % frame == 0 for n in lengths)
    grids = [bench_step.grid_for(n, frame) for n in lengths]
    assert {(h, w) for _, h, w in grids} == {(8, 16)}
    assert [t * h * w for t, h, w in grids] == lengths
    assert bench_step.sample_lengths(10, 3, "equal", seed=0) == [4, 3, 3]


def test_peer_batch_pads_every_axis_to_the_largest():
    a, b = torch.ones(2, 3, 4, 2), torch.ones(2, 1, 2, 6)
    batch = peer_batch([a, b], [a, b], torch.tensor([0.5, 0.25]), torch.zeros(2, 3, 5),
                       torch.device("cpu"))
    assert batch.latents.shape == (2, 2, 3, 4, 6) and batch.padded
    assert batch.latents[0].sum() == a.sum() and batch.latents[1].sum() == b.sum()
    assert batch.timesteps.tolist() == [500.0, 250.0]


def test_bench_step_runs_both_systems(tmp_path, capsys):
    out = tmp_path / "step.json"
    assert main(["bench", "step", "--set", "depth=1", "--tokens", "256", "--samples", "2",
                 "--mix", "mixed", "--text-tokens", "8", "--repeats", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ours / peer:" in printed and "MFU" in printed
    report = json.loads(out.read_text())
    cfg = load_model_config("configs/models/tiny.yaml", ["depth=1"])
    assert sum(report["lengths"]) == 256 and len(report["lengths"]) == 2
    assert report["flops"] == pack_train_flops(cfg, report["lengths"], [8, 8])
    assert [r["system"] for r in report["rows"]] == ["megagoku", "diffusers Wan"]
    for r in report["rows"]:
        assert abs(r["forward_s"] + r["backward_s"] + r["optimizer_s"] - r["step_s"]) < 1e-9
        assert abs(r["tokens_per_s"] - 256 / r["step_s"]) < 1e-6 * r["tokens_per_s"]
        assert abs(r["mfu"] - report["flops"] / r["step_s"] / report["peak_flops"]) < 1e-9
    rows = report["rows"]
    assert abs(report["ratio"] - rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]) < 1e-9


def test_bench_step_bad_input_is_one_line(capsys):
    assert main(["bench", "step", "--tokens", "3", "--samples", "4"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --tokens 3 cannot hold --samples 4 (one token each)"
    assert main(["bench", "step", "--set", "depth=0"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
