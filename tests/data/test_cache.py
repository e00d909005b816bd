"""The latent cache: what it serves equals encoding the raw files, it resumes shard by shard,
refuses to mix settings, and training reads it."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from megagoku.cli import main
from megagoku.config import ConfigError, load_training_config
from megagoku.config.schema import DataConfig
from megagoku.data import PackingLoader
from megagoku.data.cache import CacheError, CachedDataset, LatentCache
from megagoku.data.files import ManifestDataset
from megagoku.data.shapes_files import write_shapes_files
from megagoku.models import TextEncoder

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/tiny.yaml")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    manifest = write_shapes_files(folder / "files", DataConfig(image_fraction=0.3), 9)
    with open(manifest, "a") as f:  # one record whose file is gone
        f.write(json.dumps({"path": "clips/gone.webm", "caption": "gone", "kind": "video",
                            "width": 16, "height": 16, "frames": 8, "fps": 8}) + "\n")
    out = folder / "cache"
    assert main(["cache", "--config", CONFIG, "--manifest", str(manifest), "--out", str(out),
                 "--shard-size", "4", "--dtype", "float32"]) == 0
    return manifest, out


def overrides(manifest, out):
    return [f"data.manifest={manifest}", f"data.cache={out}", "data.kind=cache"]


def test_cache_serves_what_encoding_the_files_gives(cached):
    manifest, out = cached
    cfg = load_training_config(CONFIG, overrides(manifest, out))
    raw = ManifestDataset(replace(cfg.data, kind="manifest"))
    cache = CachedDataset(cfg.data)
    index = json.loads((out / "cache.json").read_text())
    assert index["complete"] and index["shards"] == 3
    assert (index["samples"], index["skipped"]) == (9, 1)
    encoder = TextEncoder(cfg.text.encoder, cfg.text.max_length)
    for position in range(len(raw)):
        want, got = raw.load(position), cache.cache.load(position)
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got.latent, want.pixels)  # identity latent space: pixels
        assert got.caption == want.caption and got.kind == want.kind
        torch.testing.assert_close(got.text, encoder.encode([want.caption])[0])
    # The stream order is the manifest dataset's.
    assert [cache.order.position(i) for i in range(30)] == \
        [raw.order.position(i) for i in range(30)]


def test_packs_from_the_cache_equal_packs_from_the_files(cached):
    manifest, out = cached
    cfg = load_training_config(CONFIG, overrides(manifest, out))
    raw = ManifestDataset(replace(cfg.data, kind="manifest"))
    a = PackingLoader(raw, lambda x: x, (1, 4, 4), 512, window=4)
    b = PackingLoader(CachedDataset(cfg.data), None, (1, 4, 4), 512, window=4)
    for _ in range(4):
        pa, pb = a.next_pack(), b.next_pack()
        assert pa.captions == pb.captions and torch.equal(pa.tokens, pb.tokens)
        assert pb.texts is not None and len(pb.texts) == pb.num_samples
    assert a.skipped == b.skipped > 0


def test_rerun_writes_only_missing_shards(cached, tmp_path):
    manifest, out = cached
    copy = tmp_path / "cache"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "shard-00001.json").unlink()  # as if the job died while writing shard 1
    with pytest.raises(CacheError, match="incomplete \\(1 of 3 shards missing\\)"):
        LatentCache(copy)
    kept = {n: os.stat(copy / n).st_mtime_ns for n in ("shard-00000.safetensors",
                                                       "shard-00002.safetensors")}
    assert main(["cache", "--config", CONFIG, "--manifest", str(manifest), "--out", str(copy),
                 "--shard-size", "4", "--dtype", "float32"]) == 0
    assert {n: os.stat(copy / n).st_mtime_ns for n in kept} == kept
    assert (copy / "shard-00001.json").read_text() == (out / "shard-00001.json").read_text()


def test_other_settings_never_mix_into_a_cache(cached, capsys):
    manifest, out = cached
    assert main(["cache", "--config", CONFIG, "--manifest", str(manifest), "--out", str(out),
                 "--shard-size", "4", "--set", "data.height=32", "--set", "data.width=32"]) == 2
    assert "cache.json: the cache was written with other settings (data)" in capsys.readouterr().err


def test_training_refuses_a_cache_of_another_latent_space_or_encoder(cached, tmp_path):
    from megagoku.train.trainer import preflight

    manifest, out = cached
    cfg = load_training_config(CONFIG, overrides(manifest, out) + ["text.max_length=8"])
    with pytest.raises(ConfigError, match="data.cache: .* holds text .*max_length': 16"):
        preflight(cfg, "cfg.yaml")
    cfg = load_training_config(CONFIG, overrides(manifest, tmp_path))
    with pytest.raises(ConfigError, match="cfg.yaml: data.cache: .* has no cache.json"):
        preflight(cfg, "cfg.yaml")


def test_training_reads_the_cache(cached, tmp_path):
    from megagoku.train.trainer import train

    manifest, out = cached
    cfg = load_training_config(CONFIG, overrides(manifest, out) + [
        "train.steps=3", "train.log_every=1", "model.depth=1", "data.tokens_per_step=512",
        "train.max_minutes=0"])
    result = train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 3 and all(r["loss"] > 0 for r in records)
    assert records[-1]["data_skipped"] >= 1  # the missing file, skipped when cached, counted


def test_the_cache_holds_the_empty_caption_and_rewrites_it_when_damaged(cached, tmp_path,
                                                                        caplog):
    manifest, out = cached
    cfg = load_training_config(CONFIG, overrides(manifest, out))
    want = TextEncoder(cfg.text.encoder, cfg.text.max_length).encode([""])[0]
    assert torch.equal(LatentCache(out).empty_caption(), want)  # stored as float32 here
    copy = tmp_path / "cache"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    damaged = bytearray((copy / "empty-caption.safetensors").read_bytes())
    damaged[-1] ^= 0xFF
    (copy / "empty-caption.safetensors").write_bytes(bytes(damaged))
    assert LatentCache(copy).empty_caption() is None  # the trainer encodes it instead
    assert "empty-caption.safetensors: tensor text differs from its checksum" in caplog.text
    assert main(["cache", "--config", CONFIG, "--manifest", str(manifest), "--out", str(copy),
                 "--shard-size", "4", "--dtype", "float32"]) == 0  # no shard to write
    assert torch.equal(LatentCache(copy).empty_caption(), want)


def test_training_from_the_cache_loads_no_text_encoder(cached, tmp_path, monkeypatch):
    from megagoku.train.components import data
    from megagoku.train.trainer import train

    def refused(*args, **kwargs):
        raise AssertionError("the text encoder was loaded")

    monkeypatch.setattr(data, "TextEncoder", refused)
    manifest, out = cached
    cfg = load_training_config(CONFIG, overrides(manifest, out) + [
        "train.steps=2", "model.depth=1", "data.tokens_per_step=512", "train.max_minutes=0",
        "text.dropout=0.5", "sample.every=0", "eval.every=0"])
    assert train(cfg, tmp_path).steps == 2


def test_two_ranks_split_the_shards_and_build_the_same_cache(cached, tmp_path):
    """Under a launcher each rank writes shards s % world == rank; rank 0 completes the index.
    The result equals the single-process cache (up to thread-count rounding: these ranks run
    one thread each)."""
    from safetensors.torch import load_file

    from tests.distributed.launch import run_ranks

    manifest, out = cached
    two = tmp_path / "cache"
    outputs = run_ranks(2, ["-m", "megagoku", "cache", "--config", CONFIG, "--manifest",
                            str(manifest), "--out", str(two), "--shard-size", "4",
                            "--dtype", "float32"], timeout=180)
    assert "rank 0 of 2 writes 2" in outputs[0] and "rank 1 of 2 writes 1" in outputs[1]
    for shard in range(3):
        name = f"shard-{shard:05d}"
        assert (two / f"{name}.json").read_text() == (out / f"{name}.json").read_text()
        got, want = (load_file(str(d / f"{name}.safetensors")) for d in (two, out))
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    assert LatentCache(two).settings == LatentCache(out).settings
