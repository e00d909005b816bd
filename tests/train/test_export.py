"""`megagoku convert`: a checkpoint consolidated into a model directory holds exactly its weights
(streamed one tensor at a time, in the chosen dtype), samples the same videos, initialises a run
to the same bits as the checkpoint itself, and `--inspect` verifies and describes both kinds."""

import json
import weakref

import pytest
import torch
from safetensors.torch import load_file

from megagoku.cli import main
from megagoku.config import ConfigError
from megagoku.inference import load_generator
from megagoku.train.checkpoint import CheckpointError, CheckpointReader, find_checkpoint, \
    load_checkpoint
from megagoku.train.export import TensorSource, consolidate, inspect, write_safetensors
from megagoku.train.trainer import train
from tests.train.test_resume import assert_identical, config, final_tensors


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(config(), path)
    return path


def test_consolidated_model_holds_the_checkpoint_weights_in_the_chosen_dtype(run_dir, tmp_path):
    reader = CheckpointReader(find_checkpoint(run_dir))
    out = consolidate(run_dir, tmp_path / "ema", progress=False)
    stored = load_file(out / "model.safetensors")  # the safetensors library reads our writer
    assert_identical(stored, reader.tensors("ema"))
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == 6 and meta["weights"] == "ema" and meta["dtype"] == "float32"
    assert meta["config"] == reader.config and meta["tensors"] == len(stored)

    half = consolidate(run_dir, tmp_path / "bf16", weights="model", dtype="bfloat16",
                       progress=False)
    stored = load_file(half / "model.safetensors")
    want = {k: v.to(torch.bfloat16) for k, v in reader.tensors("model").items()}
    assert all(t.dtype == torch.bfloat16 for t in stored.values())
    assert_identical(stored, want)
    with pytest.raises(FileExistsError, match="not empty"):
        consolidate(run_dir, half, progress=False)


def test_a_model_directory_samples_like_its_checkpoint(run_dir, tmp_path):
    out = consolidate(run_dir, tmp_path / "m", progress=False)
    videos = []
    for path in (run_dir, out):
        cfg, state, _ = load_checkpoint(path, "ema")
        generator = load_generator(cfg, state, str(path), device="cpu")
        videos.append(generator.generate(["a red circle moving left"], 8, 16, 16, steps=2,
                                         cfg_scale=2.0))
    assert torch.equal(videos[0][0], videos[1][0])


def test_init_from_a_model_directory_equals_init_from_the_checkpoint(run_dir, tmp_path):
    out = consolidate(run_dir, tmp_path / "m", weights="model", progress=False)
    train(config(f"checkpoint.init_from={find_checkpoint(run_dir)}"), tmp_path / "a")
    train(config(f"checkpoint.init_from={out}"), tmp_path / "b")
    assert_identical(final_tensors(tmp_path / "a"), final_tensors(tmp_path / "b"))
    with pytest.raises(ConfigError, match="init_optimizer: .* is a model directory"):
        train(config(f"checkpoint.init_from={out}", "checkpoint.init_optimizer=true"),
              tmp_path / "c")


def test_inspect_verifies_and_describes_both_kinds(run_dir, tmp_path, capsys):
    report = inspect(run_dir)
    assert report["kind"] == "checkpoint" and report["step"] == 6
    assert report["parallel"]["tensor_parallel"] == 1 and report["world_size"] == 1
    assert report["tensors"]["ema/final.linear.weight"]["dtype"] == "float32"
    out = consolidate(run_dir, tmp_path / "m", dtype="float16", progress=False)
    model = inspect(out)
    assert model["kind"] == "model" and model["dtype"] == "float16"
    assert model["tensors"].keys() == {k.split("/", 1)[1] for k in report["tensors"]
                                       if k.startswith("ema/")}
    assert main(["convert", "--inspect", str(out)]) == 0
    assert "model " in capsys.readouterr().out
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one bit of one weight
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum differs"):
        inspect(out)
    assert main(["convert", "--inspect", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {out}/model.safetensors: checksum")


def test_the_writer_holds_one_tensor_at_a_time(tmp_path):
    alive = set()
    peak = []

    def reader(i):
        def read():
            peak.append(len(alive))
            t = torch.full((256, 64), float(i))
            alive.add(i)
            weakref.finalize(t, alive.discard, i)
            return t
        return read

    sources = [TensorSource(f"t{i}", [256, 64], torch.float32, reader(i)) for i in range(5)]
    write_safetensors(tmp_path / "x.safetensors", sources)
    assert max(peak) == 0  # every tensor was released before the next was read
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[f"t{i}"], torch.full((256, 64), float(i))) for i in range(5))


def test_conversion_maps_each_file_only_while_it_reads_from_it(run_dir, tmp_path, monkeypatch):
    """A mapped file's touched pages stay in the process's memory: a conversion that kept its
    files mapped held 18.5 GB for Goku-8B (BENCHMARKS.md), so it reads with `read_once`."""
    opened = []

    def kept_open(self, key):
        opened.append(key)
        raise AssertionError("conversion must not keep checkpoint files mapped")

    monkeypatch.setattr(CheckpointReader, "tensor", kept_open)
    out = consolidate(run_dir, tmp_path / "m", progress=False)
    reader = CheckpointReader(find_checkpoint(run_dir))
    first = sorted(reader.keys("ema"))[0]
    assert torch.equal(load_file(out / "model.safetensors")[first], reader.read_once(f"ema/{first}"))
    assert not opened and not reader._files
