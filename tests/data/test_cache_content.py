"""The latent cache is keyed by its contents: a shard encoded from manifest records that have
changed since is rebuilt, never served; a folder written with another dtype (or settings) is
refused in one line, or rebuilt under --overwrite; a shard that is not whole is skipped and
counted like an undecodable video when training reads it, and rebuilt by `megagoku cache`; one
`megagoku cache` per folder; shards honour the umask."""

import json
import logging
import os
import shutil

import pytest

from megagoku.cli import main
from megagoku.config import load_training_config
from megagoku.config.schema import DataConfig
from megagoku.data.cache import CacheError, CacheLock, LatentCache
from megagoku.data.shapes_files import write_shapes_files
from megagoku.storage import read_header
from tests.data.test_cache import CONFIG, overrides


def cache(manifest, out, *extra) -> int:
    return main(["cache", "--config", CONFIG, "--manifest", str(manifest), "--out", str(out),
                 "--shard-size", "4", "--dtype", "float32", *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    manifest = write_shapes_files(folder / "files", DataConfig(image_fraction=0.3), 12)
    assert cache(manifest, folder / "cache") == 0
    return manifest, folder / "cache"


@pytest.fixture
def copy(built, tmp_path):
    """The cache and its manifest, copied, to change."""
    manifest, out = built
    shutil.copytree(manifest.parent, tmp_path / "files")
    shutil.copytree(out, tmp_path / "cache")
    return tmp_path / "files" / manifest.name, tmp_path / "cache"


def captions(out):
    cached = LatentCache(out)
    return [None if cached.load(p) is None else cached.load(p).caption for p in range(len(cached))]


def test_an_edited_manifest_is_never_served_from_old_shards(copy, capsys):
    manifest, out = copy
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[5]["caption"] = "an edited caption"  # record 5 lives in shard 1
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = {n: os.stat(out / n).st_mtime_ns for n in ("shard-00000.safetensors",
                                                      "shard-00002.safetensors")}
    assert cache(manifest, out) == 0  # nothing deleted: the changed shard is found all the same
    assert {n: os.stat(out / n).st_mtime_ns for n in kept} == kept  # the others are kept
    assert captions(out)[5] == "an edited caption"


def test_another_dtype_is_refused_in_one_line_or_rebuilt(copy, capsys):
    manifest, out = copy
    (out / "shard-00001.json").unlink()  # as if a shard had been deleted
    assert main(["cache", "--config", CONFIG, "--manifest", str(manifest), "--out", str(out),
                 "--shard-size", "4", "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cache.json: the cache was written with other dtype " \
        "(float32, not bfloat16); use another --out, or --overwrite to rebuild it" in err
    assert main(["cache", "--config", CONFIG, "--manifest", str(manifest), "--out", str(out),
                 "--shard-size", "4", "--dtype", "bfloat16", "--overwrite"]) == 0
    dtypes = {entry.dtype for s in range(3)
              for entry in read_header(out / f"shard-{s:05d}.safetensors").tensors.values()}
    assert dtypes == {"BF16"}  # every shard rebuilt: none mixed in from before


def test_a_truncated_shard_is_skipped_and_counted_then_rebuilt(copy, tmp_path, caplog):
    from megagoku.train.trainer import train

    manifest, out = copy
    shard = out / "shard-00002.safetensors"
    os.truncate(shard, shard.stat().st_size // 2)
    cached = LatentCache(out)
    with caplog.at_level(logging.WARNING):
        loaded = [cached.load(p) for p in range(len(cached))]
    assert [p for p, s in enumerate(loaded) if s is None] == [8, 9, 10, 11]
    assert sum("shard-00002.safetensors: not a valid safetensors file" in r.message
               and "its 4 records are skipped" in r.message for r in caplog.records) == 1
    # Training reads past it, counting the skipped records like undecodable files.
    cfg = load_training_config(CONFIG, overrides(manifest, out) + [
        "train.steps=3", "train.log_every=1", "model.depth=1", "data.tokens_per_step=512",
        "train.max_minutes=0"])
    result = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert result.steps == 3 and records[-1]["data_skipped"] >= 1
    # `megagoku cache` rebuilds it.
    assert cache(manifest, out) == 0
    assert None not in [LatentCache(out).load(p) for p in range(12)]


def test_an_altered_record_is_skipped(copy, caplog):
    _, out = copy
    shard = out / "shard-00000.safetensors"
    header = read_header(shard)
    entry = header.tensors["1.latent"]
    data = bytearray(shard.read_bytes())
    data[header.data_start + entry.start] ^= 0xFF  # same size, one byte changed
    shard.write_bytes(bytes(data))
    cached = LatentCache(out)
    with caplog.at_level(logging.WARNING):
        assert cached.load(1) is None
    assert cached.load(0) is not None and cached.bad_records == 1
    assert "tensor 1.latent differs from its checksum" in caplog.text


def test_one_writer_per_folder(copy, capsys):
    manifest, out = copy
    lock = CacheLock(out)
    lock.acquire()
    try:
        assert cache(manifest, out) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{out}: another megagoku cache is writing this folder (pid {os.getpid()} on" in err
    assert cache(manifest, out) == 0  # free again


def test_a_cache_of_the_old_format_is_refused(copy):
    _, out = copy
    index = json.loads((out / "cache.json").read_text())
    del index["version"]
    (out / "cache.json").write_text(json.dumps(index))
    with pytest.raises(CacheError, match="older megagoku .*megagoku cache --overwrite"):
        LatentCache(out)


def test_shards_honour_the_umask(built, tmp_path):
    manifest, _ = built
    old = os.umask(0o002)
    try:
        assert cache(manifest, tmp_path / "c") == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "c").iterdir()}
    assert set(modes.values()) == {0o664}, modes


def test_the_text_encoder_weights_are_part_of_the_key(built):
    _, out = built
    settings = LatentCache(out).settings
    assert settings["text"]["weights"] and len(settings["text"]["weights"]) == 32
    assert json.loads((out / "cache.json").read_text())["dtype"] == "float32"
