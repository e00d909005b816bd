"""`megagoku demo` in a VAE's latent space at a toy size: every stage runs and writes what the
next one reads, the report is made of decoded samples, and a second run skips what is done."""

import json
from pathlib import Path

import pytest
import yaml

from megagoku.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/demo_latent.yaml")


def small_vae_config(tmp_path: Path) -> Path:
    vae = yaml.safe_load((ROOT / "configs/vae/shapes64.yaml").read_text())
    vae["vae"].update(base_channels=8, channel_multipliers=[1, 1, 2])  # patch 2: three levels
    vae["data"].update(height=16, width=16, frames=5)
    vae["train"].update(steps=4, foreground_anneal_start=1, log_every=2, stats_samples=4,
                        eval_clips=4)
    path = tmp_path / "vae.yaml"
    path.write_text(yaml.safe_dump(vae))
    return path


@pytest.mark.slow
def test_stages_run_then_a_rerun_skips_them(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    args = ["demo", "--config", CONFIG, "--run-dir", str(run), "--seeds", "1",
            "--set", f"demo.vae={small_vae_config(tmp_path)}", "--set", "demo.samples=12",
            "--set", "data.height=16", "--set", "data.width=16", "--set", "data.frames=5",
            "--set", "train.steps=4", "--set", "train.log_every=2", "--set", "sample.steps=2",
            "--set", "checkpoint.every=0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "VAE (" in out and "held-out clips: foreground MSE" in out
    assert "held_out prompts: colour right" in out and "decoded by the VAE" in out
    for done in ("vae/vae/vae.safetensors", "vae/reconstruction.json", "vae/reconstructions.png",
                 "shapes/manifest.jsonl", "cache/cache.json", "samples/report.json",
                 "samples/overview.png", "demo.json"):
        assert (run / done).is_file(), done
    cached = json.loads((run / "cache/cache.json").read_text())
    assert cached["complete"] and cached["samples"] == 12
    assert cached["settings"]["latent"]["path"] == str((run / "vae/vae").resolve())
    report = json.loads((run / "samples/report.json").read_text())
    assert set(report) == {"held_out", "seen"}
    vae_weights = (run / "vae/vae/vae.safetensors").stat().st_mtime_ns
    checkpoints = sorted(p.name for p in (run / "model/checkpoints").iterdir())

    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args) == 0
    logged = caplog.text
    assert "is finished, skipped" in logged and "is written, skipped" in logged
    assert "is complete, skipped" in logged
    assert (run / "vae/vae/vae.safetensors").stat().st_mtime_ns == vae_weights
    assert sorted(p.name for p in (run / "model/checkpoints").iterdir()) == checkpoints


def test_a_latent_demo_without_a_vae_config_stops_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["demo", "--config", CONFIG, "--run-dir", str(run), "--set", "demo.vae=null"]) == 2
    assert "demo.vae: the latent demo trains its VAE first" in capsys.readouterr().err
    assert main(["demo", "--config", CONFIG, "--run-dir", str(run),
                 "--set", "demo.vae=vae/none.yaml"]) == 2
    assert "demo.vae: no such train-vae config 'vae/none.yaml'" in capsys.readouterr().err
    assert not run.exists()
