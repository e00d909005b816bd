"""The whole data path on built-in data through the command line: shapes written as files ->
train-vae -> cache in the VAE's latent space -> train from the cache and from the files ->
sample (decoded by the VAE)."""

import json
from pathlib import Path

import pytest

from megagoku.cli import main

ROOT = Path(__file__).resolve().parents[2]
LATENT = str(ROOT / "configs/tiny_latent.yaml")


@pytest.mark.slow
def test_files_vae_cache_train_sample(tmp_path):
    shapes, vae, cache = tmp_path / "shapes", tmp_path / "vae", tmp_path / "cache"
    manifest = shapes / "manifest.jsonl"
    common = [f"--set=latent.path={vae / 'vae'}", f"--set=data.manifest={manifest}"]
    assert main(["data", "shapes", "--out", str(shapes), "--config", LATENT, "--count", "16"]) == 0
    assert main(["train-vae", "--config", str(ROOT / "configs/vae/tiny.yaml"), "--run-dir",
                 str(vae), "--set", "train.steps=10", "--set", "train.log_every=5"]) == 0
    assert main(["cache", "--config", LATENT, "--out", str(cache), "--shard-size", "8"]
                + common) == 0
    index = json.loads((cache / "cache.json").read_text())
    assert index["complete"] and index["samples"] == 16
    for kind, extra in (("cache", ["--set=data.kind=cache", f"--set=data.cache={cache}"]),
                        ("files", [])):
        run = tmp_path / f"run-{kind}"
        assert main(["train", "--config", LATENT, "--run-dir", str(run), "--set=train.steps=4",
                     "--set=train.log_every=2"] + common + extra) == 0
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(r["loss"] > 0 for r in records)
    out = tmp_path / "s.gif"
    assert main(["sample", "--checkpoint", str(tmp_path / "run-cache"), "--prompt",
                 "a red circle moving up", "--out", str(out), "--frames", "9", "--height", "32",
                 "--width", "32", "--steps", "2"]) == 0
    assert out.stat().st_size > 0
