"""Checkpoints verified by content, not only by their manifest: a checkpoint whose manifest was
re-signed after its tensors were relabelled, filled with NaN, forged or pointed outside the folder
is refused in one line naming the file by `sample`, `convert` (and `--inspect`), `train --resume`
and `checkpoint.init_from`; checkpoints written before xxh3 (sha256 manifests) still verify; the
tensor files honour the umask; a half-written `.tmp_step_N` is never taken for a checkpoint."""

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml

from megagoku.cli import main
from megagoku.storage import file_checksum, read_header
from megagoku.train.checkpoint import (CheckpointError, CheckpointReader, find_checkpoint,
                                       load_checkpoint, sha256_of, verify_checkpoint)
from megagoku.train.trainer import train
from tests.train.test_resume import ROOT, config

CONFIG = str(ROOT / "configs/tiny.yaml")
WEIGHT = "ema/final.linear.weight"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(config(), path)
    return path


@pytest.fixture
def ckpt(run_dir, tmp_path):
    """A copy of the run's final checkpoint, to tamper with."""
    copy = tmp_path / "step_00000006"
    shutil.copytree(find_checkpoint(run_dir), copy)
    return copy


def resign(ckpt: Path) -> None:
    """What a forger does after editing files: a manifest that matches them again."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest:
        manifest[name] = {"bytes": (ckpt / name).stat().st_size,
                          "xxh3_128": file_checksum(ckpt / name)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def file_of(ckpt: Path, key: str) -> Path:
    return ckpt / json.loads((ckpt / "state.json").read_text())["index"][key]


def rewrite_header(path: Path, edit) -> None:
    """Edit the JSON header of a safetensors file (the data stays as it was)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


def poke(path: Path, key: str, values: torch.Tensor) -> None:
    """Overwrite the first elements of tensor `key`'s data."""
    header = read_header(path)
    start = header.data_start + header.tensors[key].start
    raw = values.numpy().tobytes()
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(raw)


def one_error_line(capsys, *must_contain: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and len(err.strip().splitlines()) == 1, err
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def sample(ckpt, tmp_path, *extra) -> int:
    return main(["sample", "--checkpoint", str(ckpt), "--prompt", "a red circle moving left",
                 "--out", str(tmp_path / "x.gif"), "--steps", "1", *extra])


def test_nonfinite_tensors_are_refused_naming_the_tensor_unless_allowed(ckpt, tmp_path, capsys):
    file = file_of(ckpt, WEIGHT)
    poke(file, WEIGHT, torch.tensor([float("nan"), float("inf")]))
    resign(ckpt)
    verify_checkpoint(ckpt)  # the files are what the manifest says: only their values are bad
    assert sample(ckpt, tmp_path) == 2
    one_error_line(capsys, str(file), WEIGHT, "2 non-finite value(s)", "--allow-nonfinite")
    assert not (tmp_path / "x.gif").exists()
    assert main(["convert", "--input", str(ckpt), "--output", str(tmp_path / "m")]) == 2
    one_error_line(capsys, str(file), WEIGHT, "non-finite")
    assert main(["convert", "--input", str(ckpt), "--output", str(tmp_path / "m2"),
                 "--allow-nonfinite"]) == 0
    assert sample(ckpt, tmp_path, "--allow-nonfinite") == 0
    capsys.readouterr()
    # Training from it: resume and init_from refuse it alike, unless the config allows it.
    assert main(["train", "--config", CONFIG, "--run-dir", str(tmp_path / "r"), "--resume",
                 str(ckpt), *sum((["--set", s] for s in ("train.steps=7", "model.depth=2")),
                                 [])]) == 2
    one_error_line(capsys, str(file), "non-finite")
    with pytest.raises(CheckpointError, match="non-finite"):
        train(config(f"checkpoint.init_from={ckpt}"), tmp_path / "i")
    train(config(f"checkpoint.init_from={ckpt}", "checkpoint.allow_nonfinite=true",
                 "train.steps=1", "checkpoint.every=0"), tmp_path / "j")


def test_tensors_relabelled_as_integers_are_refused(ckpt, tmp_path, capsys):
    file = file_of(ckpt, WEIGHT)

    def relabel(header):
        header[WEIGHT]["dtype"] = "I32"  # same bytes per element: safetensors itself accepts it

    rewrite_header(file, relabel)
    resign(ckpt)
    with pytest.raises(CheckpointError, match=f"{WEIGHT} is stored as I32; .*floating-point"):
        verify_checkpoint(ckpt)
    assert sample(ckpt, tmp_path) == 2
    one_error_line(capsys, str(file), "I32")
    assert main(["convert", "--input", str(ckpt), "--output", str(tmp_path / "m")]) == 2
    one_error_line(capsys, str(file), "I32")
    assert not (tmp_path / "m" / "model.safetensors").exists()
    assert main(["convert", "--inspect", str(ckpt)]) == 2
    one_error_line(capsys, str(file), "I32")


def test_index_paths_outside_the_checkpoint_are_refused(ckpt, tmp_path, capsys):
    outside = ckpt.parent / "outside.safetensors"
    inside = file_of(ckpt, WEIGHT)
    shutil.copy(inside, outside)
    state = json.loads((ckpt / "state.json").read_text())
    state["index"] = {k: "../outside.safetensors" if f == inside.name else f
                      for k, f in state["index"].items()}
    (ckpt / "state.json").write_text(json.dumps(state))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["../outside.safetensors"] = manifest.pop(inside.name)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    resign(ckpt)
    with pytest.raises(CheckpointError, match=r"'\.\./outside\.safetensors' is not a plain name"):
        find_checkpoint(ckpt)
    assert sample(ckpt, tmp_path) == 2
    one_error_line(capsys, "manifest.json", "../outside.safetensors", "refused")
    # The index alone pointing out (the manifest unchanged) is refused as well.
    manifest["" + inside.name] = manifest.pop("../outside.safetensors")
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    resign(ckpt)
    with pytest.raises(CheckpointError, match=r"state.json: file name '\.\./outside"):
        CheckpointReader(ckpt)
    # A tensor file that is a link out of the folder is refused too.
    inside.unlink()
    inside.symlink_to(outside)
    resign(ckpt)
    state["index"] = {k: inside.name if f == "../outside.safetensors" else f
                      for k, f in state["index"].items()}
    (ckpt / "state.json").write_text(json.dumps(state))
    resign(ckpt)
    with pytest.raises(CheckpointError, match="a symbolic link"):
        verify_checkpoint(ckpt)


def forge_huge_shape(header):
    header[WEIGHT]["shape"] = [2 ** 40, 2 ** 40]


def forge_overlap(header):
    entries = sorted((e["data_offsets"][0], k) for k, e in header.items() if k != "__metadata__")
    first, second = entries[0][1], entries[1][1]
    length = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    start = header[first]["data_offsets"][0]
    header[second]["data_offsets"] = [start, start + length]


@pytest.mark.parametrize("forge", ["huge shape", "overlapping offsets", "2^62 header length"])
def test_forged_headers_are_one_line_in_sample_and_inspect(ckpt, tmp_path, capsys, forge):
    file = file_of(ckpt, WEIGHT)
    if forge == "2^62 header length":
        data = bytearray(file.read_bytes())
        data[:8] = struct.pack("<Q", 2 ** 62)
        file.write_bytes(bytes(data))
    else:
        rewrite_header(file, forge_huge_shape if forge == "huge shape" else forge_overlap)
    resign(ckpt)
    assert sample(ckpt, tmp_path) == 2
    line = one_error_line(capsys, str(file), "not a valid safetensors file")
    assert main(["convert", "--inspect", str(ckpt)]) == 2
    assert one_error_line(capsys) == line
    assert main(["train", "--config", CONFIG, "--run-dir", str(tmp_path / "r"), "--resume",
                 str(ckpt), "--set", "model.depth=2", "--set", "train.steps=7"]) == 2
    one_error_line(capsys, str(file), "not a valid safetensors file")


def test_weights_of_another_shape_are_one_line(ckpt, tmp_path, capsys):
    """A checkpoint whose config describes another model than its tensors (re-signed)."""
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg["model"]["hidden_size"] *= 2
    cfg["model"]["num_heads"] *= 2  # the same head size
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg))
    resign(ckpt)
    assert sample(ckpt, tmp_path) == 2
    line = one_error_line(capsys, f"{ckpt}: does not fit this model: ",
                          "shapes differ (checkpoint vs model: ")
    # Training from it under that model config: the same check (parallel.weights.WeightsFit),
    # the same tensors named.
    with pytest.raises(CheckpointError, match=f"{ckpt}: does not fit this model: .* shapes differ"
                       ) as error:
        train(config(f"checkpoint.init_from={ckpt}", f"model.hidden_size={cfg['model']['hidden_size']}",
                     f"model.num_heads={cfg['model']['num_heads']}"), tmp_path / "i")
    problems = str(error.value).split("does not fit this model: ")[1].rsplit(" (", 1)[0]
    assert f"does not fit this model: {problems} (" in line, (problems, line)


def test_python_tags_in_a_checkpoint_config_are_refused(ckpt):
    (ckpt / "config.yaml").write_text("model: !!python/object/apply:os.system ['true']\n")
    resign(ckpt)
    with pytest.raises(CheckpointError, match="unreadable config.yaml"):
        CheckpointReader(ckpt)


def test_checkpoints_with_sha256_manifests_still_verify(ckpt):
    """Checkpoints written before xxh3-128: their manifests hold sha256."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    old = {name: {"bytes": e["bytes"], "sha256": sha256_of(ckpt / name)}
           for name, e in manifest.items()}
    (ckpt / "manifest.json").write_text(json.dumps(old))
    assert find_checkpoint(ckpt) == ckpt
    _, state, _ = load_checkpoint(ckpt, "ema")
    assert state  # loads
    data = bytearray((ckpt / "config.yaml").read_bytes())
    data[-2] ^= 1
    (ckpt / "config.yaml").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="config.yaml: checksum differs"):
        find_checkpoint(ckpt)


def test_a_half_written_save_is_never_taken_for_a_checkpoint(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    newest = find_checkpoint(copy)
    # A save of a later step that never committed: complete-looking, but still under its
    # temporary name.
    shutil.copytree(newest, copy / "checkpoints" / ".tmp_step_00000099")
    assert find_checkpoint(copy) == newest


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664)])
def test_tensor_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        train(config("train.steps=2", "checkpoint.every=0"), tmp_path)
    finally:
        os.umask(old)
    files = list(find_checkpoint(tmp_path).iterdir())
    assert any(f.suffix == ".safetensors" for f in files)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == \
        {f.name: oct(mode) for f in files}


def test_model_directories_with_sha256_still_verify(run_dir, tmp_path):
    from megagoku.train.checkpoint import verify_model_dir
    from megagoku.train.export import consolidate

    out = consolidate(run_dir, tmp_path / "m", progress=False)
    meta = json.loads((out / "config.json").read_text())
    meta["sha256"] = sha256_of(out / "model.safetensors")  # as written before xxh3-128
    del meta["xxh3_128"]
    (out / "config.json").write_text(json.dumps(meta))
    assert verify_model_dir(out)["step"] == 6
    meta["sha256"] = "0" * 64
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.safetensors: checksum differs from config.json"):
        verify_model_dir(out)
