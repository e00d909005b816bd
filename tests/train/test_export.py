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


def test_bad_outputs_and_inputs_get_one_line(run_dir, tmp_path, capsys):
    def refused(*args) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    (tmp_path / "file").write_text("x")
    assert "is a file" in refused("convert", "--input", str(run_dir), "--output",
                                  str(tmp_path / "file"))
    err = refused("convert", "--input", str(run_dir), "--output", str(tmp_path / "m.safetensors"))
    assert "writes a model directory" in err and f"--output {tmp_path / 'm'}" in err
    assert not (tmp_path / "m.safetensors").exists()
    assert "no such file or directory" in refused("convert", "--input", str(tmp_path / "nope"),
                                                  "--output", str(tmp_path / "o"))
    assert "no such file or directory" in refused("convert", "--inspect", str(tmp_path / "no"))


def test_a_rerun_replaces_its_own_partial_output(run_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m"

    def interrupted(path, *args, **kwargs):
        (path.with_name(path.name + ".partial")).write_bytes(b"half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("megagoku.train.export.write_safetensors", interrupted)
        with pytest.raises(KeyboardInterrupt):
            consolidate(run_dir, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["model.safetensors.partial"]
    with pytest.raises(CheckpointError, match="interrupted convert"):
        inspect(out)
    assert main(["convert", "--input", str(run_dir), "--output", str(out)]) == 0
    assert "replacing" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    inspect(out)
    (out / "extra").write_text("not ours")
    with pytest.raises(FileExistsError, match="not empty"):
        consolidate(run_dir, out, progress=False)


def model_dir(path, tensors: dict, weights: str = "ema"):
    """A model directory holding `tensors` (as `convert` writes one)."""
    path.mkdir()
    digest = write_safetensors(path / "model.safetensors",
                               [TensorSource(k, list(v.shape), v.dtype, lambda v=v: v)
                                for k, v in tensors.items()],
                               {"format": "megagoku-model", "weights": weights})
    (path / "config.json").write_text(json.dumps({
        "format": "megagoku-model", "version": 1, "config": {}, "weights": weights,
        "dtype": "float32", "step": 3, "source": "a test", "xxh3_128": digest,
        "bytes": (path / "model.safetensors").stat().st_size, "tensors": len(tensors)}))
    return path


def test_casting_counts_values_that_under_or_overflow(run_dir, tmp_path, capsys):
    """float16 flushes |x| < 2**-25 to 0 and rounds |x| >= 65520 to inf; both are counted, for a
    checkpoint and for a model directory re-cast (a non-finite value is neither)."""
    ema = CheckpointReader(find_checkpoint(run_dir)).tensors("ema")
    values = torch.cat([t.flatten() for t in ema.values() if t.is_floating_point()])
    underflow = int(((values != 0) & (values.to(torch.float16) == 0)).sum())
    assert main(["convert", "--input", str(run_dir), "--output", str(tmp_path / "h"), "--dtype",
                 "float16"]) == 0
    assert f"cast {values.numel()} values to float16: {underflow} nonzero became 0 (underflow), " \
           "0 became inf (overflow)" in capsys.readouterr().out

    source = model_dir(tmp_path / "m", {"w": torch.tensor([1e-9, -1e-30, 1e6, 0.5, 0.0,
                                                            float("inf")]),
                                        "b": torch.tensor([-7e4, 2.0])})
    with pytest.raises(CheckpointError, match="tensor w holds 1 non-finite value"):
        consolidate(source, tmp_path / "refused", dtype="float16", progress=False)
    out = consolidate(source, tmp_path / "half", dtype="float16", progress=False,
                      allow_nonfinite=True)
    meta = json.loads((out / "config.json").read_text())
    assert meta["cast"] == {"dtype": "float16", "values": 8, "underflow": 2, "overflow": 2}
    assert meta["weights"] == "ema" and meta["step"] == 3 and meta["dtype"] == "float16"
    half = load_file(out / "model.safetensors")
    assert torch.equal(half["w"], torch.tensor([1e-9, -1e-30, 1e6, 0.5, 0.0, float("inf")],
                                               dtype=torch.float16))
    assert inspect(out)["kind"] == "model"
    with pytest.raises(ValueError, match="--weights model: .* ema weights only"):
        consolidate(source, tmp_path / "raw", weights="model", progress=False)
