"""megagoku/storage.py: tensor files written whole with the umask's mode and a checksum computed
as written; headers checked against their file before anything is mapped (every forgery one
TensorFileError line naming the file); per-tensor checksums; fingerprints by content."""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file

from megagoku.storage import (TensorFileError, check_tensor, content_fingerprint, file_checksum,
                              read_header, write_tensors)


def tensors():
    return {"w": torch.randn(4, 3), "h": torch.randn(5).bfloat16(), "empty": torch.zeros(0),
            "scalar": torch.tensor(2.5, dtype=torch.float64), "ids": torch.arange(3)}


def test_written_files_read_back_and_carry_their_checksum(tmp_path):
    want = tensors()
    written = write_tensors(tmp_path / "a.safetensors", want, {"kind": "test"})
    got = load_file(tmp_path / "a.safetensors")  # the safetensors library reads our writer
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert written.bytes == (tmp_path / "a.safetensors").stat().st_size
    assert written.xxh3_128 == file_checksum(tmp_path / "a.safetensors")
    header = read_header(tmp_path / "a.safetensors")
    assert header.metadata == {"kind": "test"} and header.tensors["w"].shape == (4, 3)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_tensors(tmp_path / "a.safetensors", tensors())
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == mode


def test_a_failed_write_leaves_nothing(tmp_path):
    def broken():
        raise OSError("disk gone")

    from megagoku.storage import TensorSource
    with pytest.raises(OSError, match="disk gone"):
        write_tensors(tmp_path / "a.safetensors", [TensorSource("x", [2], torch.float32, broken)])
    assert list(tmp_path.iterdir()) == []


def forge(path, edit=None, length=None, cut=None):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if edit:
        edit(header)
    text = json.dumps(header).encode()
    out = struct.pack("<Q", length if length is not None else len(text)) + text + data[8 + n:]
    path.write_bytes(out[:cut] if cut else out)


@pytest.mark.parametrize("how,message", [
    (dict(length=2 ** 62), "header length 4611686018427387904 beyond"),
    (dict(edit=lambda h: h["w"].update(shape=[2 ** 40, 2 ** 40])), "offsets span 48"),
    (dict(edit=lambda h: h["h"].update(data_offsets=h["w"]["data_offsets"][:1] * 2)),
     "needs 10 bytes"),
    (dict(edit=lambda h: h["w"].update(data_offsets=[0, 48])), "overlapping or gapped"),
    (dict(edit=lambda h: h["w"].update(dtype="F128")), "unknown dtype 'F128'"),
    (dict(edit=lambda h: h["w"].update(shape=[-4, -3])), "non-negative integers"),
    (dict(cut=-7), "truncated or extended"),
    (dict(cut=6), "too short for a header"),
])
def test_forged_headers_are_one_line_naming_the_file(tmp_path, how, message):
    path = tmp_path / "a.safetensors"
    write_tensors(path, tensors())
    forge(path, **how)
    with pytest.raises(TensorFileError) as e:
        read_header(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_not_json_header(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff{[}")
    with pytest.raises(TensorFileError, match="header is not JSON"):
        read_header(path)


def test_tensor_checksums_find_a_changed_tensor(tmp_path):
    path = tmp_path / "a.safetensors"
    want = tensors()
    write_tensors(path, want, tensor_checksums=True)
    header = read_header(path)
    for name, tensor in load_file(path).items():
        check_tensor(header, name, tensor)
    with pytest.raises(TensorFileError, match="tensor w differs from its checksum"):
        check_tensor(header, "w", want["w"] + 1)


def test_fingerprints_follow_content_not_place(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "sub" / "weights.bin").write_bytes(b"\x01" * 100)
        (tmp_path / folder / "config.json").write_text("{}")
    assert content_fingerprint(tmp_path / "a") == content_fingerprint(tmp_path / "b")
    (tmp_path / "b" / "sub" / "weights.bin").write_bytes(b"\x01" * 99 + b"\x02")
    assert content_fingerprint(tmp_path / "a") != content_fingerprint(tmp_path / "b")
