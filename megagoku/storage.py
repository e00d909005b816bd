"""Tensor files on shared storage: written whole and readable by the group, checked before use,
checksummed. Every safetensors file megagoku writes (checkpoints, model directories, cache shards,
VAE and classifier weights) is written here, and every one it reads from a user's folder is
checked here first.

- `write_tensors`: a safetensors file streamed one tensor at a time into `<name>.partial`, fsynced
  and renamed into place, so it is whole or absent. It is created with `open()`, so the umask sets
  its mode (0644 under 022, 0664 under 002): safetensors' own `save_file` makes 0600 files
  whatever the umask, and a group sharing a project directory could not read a colleague's run.
  The file's checksum is computed from the bytes as they are written (no second read).
- `read_header`: the header of a safetensors file, checked against the file before any tensor is
  mapped: its length, the JSON, every dtype, shape and offset, and that the tensors tile the data
  exactly. A forged or truncated file is one `TensorFileError` line naming the file.
- `file_checksum`: xxh3-128 (what we write; several times faster than sha256, see
  `megagoku bench checkpoint` in BENCHMARKS.md) or sha256 (files written before; still
  verified).
- Files read a record at a time in random order (cache shards) carry each tensor's checksum in
  their header (`tensor_checksums`), so a reader checks what it reads and nothing more.
- `content_fingerprint`: a file or folder (a model's weights) by content, wherever it was
  copied to.

Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

import torch
import xxhash

# safetensors dtype names <-> torch dtypes
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16,
                      "F16": torch.float16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
ITEM_BYTES = {name: torch.empty((), dtype=dtype).element_size()
              for name, dtype in SAFETENSORS_DTYPES.items()}
FLOAT_DTYPES = frozenset(n for n, d in SAFETENSORS_DTYPES.items() if d.is_floating_point)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
CHECKSUMS = ("xxh3_128", "sha256")  # preferred first
TENSOR_CHECKSUM_PREFIX = "xxh3_128:"  # header metadata: "xxh3_128:<tensor>" -> its checksum
_CHUNK = 1 << 23


class TensorFileError(ValueError):
    """A tensor file that cannot be used: one line naming the file and what is wrong."""


def _hasher(algorithm: str):
    if algorithm == "xxh3_128":
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum {algorithm!r} (known: {', '.join(CHECKSUMS)})")


def file_checksum(path: Path, algorithm: str = "xxh3_128", start: int = 0,
                  on_chunk: Optional[Callable[[], None]] = None) -> str:
    """Hex digest of the file's bytes from `start` on; `on_chunk` is called after each chunk
    (a liveness report: hashing a large file is not a hang)."""
    digest = _hasher(algorithm)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            if on_chunk is not None:
                on_chunk()
    return digest.hexdigest()


def entry_checksum(entry: Mapping) -> tuple[str, str]:
    """(algorithm, hex digest) of a manifest entry: the fast one when present, else sha256."""
    for algorithm in CHECKSUMS:
        if isinstance(entry.get(algorithm), str):
            return algorithm, entry[algorithm]
    raise KeyError(f"no checksum ({' or '.join(CHECKSUMS)})")


@dataclass
class TensorSource:
    """One tensor to write: its name, shape, dtype, and how to read it when its turn comes (so
    that a writer of a whole model holds one tensor at a time)."""

    name: str
    shape: list[int]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.dtype)


def tensor_bytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class Written:
    bytes: int
    xxh3_128: str  # of the whole file


def _as_sources(tensors: Union[Mapping[str, torch.Tensor], Iterable[TensorSource]]
                ) -> list[TensorSource]:
    if isinstance(tensors, Mapping):
        return [TensorSource(k, list(v.shape), v.dtype, lambda v=v: v) for k, v in tensors.items()]
    return list(tensors)


def _raw(tensor: torch.Tensor):
    """The tensor's bytes as a buffer, without a copy for a contiguous CPU tensor."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def write_tensors(path: Path, tensors: Union[Mapping[str, torch.Tensor], Iterable[TensorSource]],
                  metadata: Optional[Mapping[str, str]] = None,
                  on_bytes: Optional[Callable[[int], None]] = None,
                  tensor_checksums: bool = False) -> Written:
    """Write a safetensors file (see the module doc): tensors largest element first, then by
    name, so that every tensor starts aligned; `on_bytes(n)` after each tensor. With
    `tensor_checksums` the header's metadata carries every tensor's checksum (`check_tensor`);
    the tensors are then read twice (for the sums, then to write), so use it for files that fit
    in memory."""
    path = Path(path)
    sources = sorted(_as_sources(tensors), key=lambda s: (-s.dtype.itemsize, s.name))
    meta = dict(metadata or {})
    if tensor_checksums:
        for s in sources:
            meta[TENSOR_CHECKSUM_PREFIX + s.name] = tensor_checksum(s.read().to(s.dtype))
    header: dict[str, object] = {"__metadata__": meta} if meta else {}
    offset = 0
    for s in sources:
        header[s.name] = {"dtype": TORCH_TO_SAFETENSORS[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    whole = xxhash.xxh3_128()
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)  # an old one would keep its mode
    try:
        with open(partial, "wb") as f:  # open() applies the umask: that is the point
            for chunk in (struct.pack("<Q", len(text)), text):
                f.write(chunk)
                whole.update(chunk)
            for s in sources:
                tensor = s.read().to(s.dtype)
                if list(tensor.shape) != list(s.shape):
                    raise TensorFileError(f"{path}: {s.name}: read {list(tensor.shape)}, "
                                          f"expected {list(s.shape)}")
                data = _raw(tensor)
                f.write(data)
                whole.update(data)
                if on_bytes is not None:
                    on_bytes(data.nbytes)
                del tensor, data
            f.flush()
            os.fsync(f.fileno())
        size = partial.stat().st_size
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Written(size, whole.hexdigest())


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # offsets in the data section
    end: int


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int  # where the data section starts in the file
    file_bytes: int


def read_header(path: Path) -> Header:
    """The header of a safetensors file, checked against the file; TensorFileError otherwise."""
    path = Path(path)

    def bad(what: str) -> TensorFileError:
        return TensorFileError(f"{path}: not a valid safetensors file ({what})")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, too short for a header")
            n = struct.unpack("<Q", head)[0]
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise bad(f"header length {n} beyond the file's {size} bytes"
                          if n > size - 8 else f"header length {n} over the limit")
            text = f.read(n)
    except OSError as e:
        raise TensorFileError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"header is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise bad("header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ is not a map of strings")
    tensors = {}
    for name, entry in raw.items():
        try:
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError):
            raise bad(f"tensor {name!r}: needs dtype, shape and data_offsets") from None
        if dtype not in ITEM_BYTES:
            raise bad(f"tensor {name!r}: unknown dtype {dtype!r}")
        ints = lambda v: isinstance(v, list) and all(  # noqa: E731
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        if not ints(shape) or not ints(offsets) or len(offsets) != 2:
            raise bad(f"tensor {name!r}: shape and data_offsets must be lists of non-negative "
                      "integers")
        start, end = offsets
        if end - start != math.prod(shape) * ITEM_BYTES[dtype]:
            raise bad(f"tensor {name!r}: {dtype} {shape} needs "
                      f"{math.prod(shape) * ITEM_BYTES[dtype]} bytes, its offsets span "
                      f"{end - start}")
        tensors[name] = TensorEntry(dtype, tuple(shape), start, end)
    data_start = 8 + n
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if entry.start != position:
            raise bad(f"tensor {name!r}: starts at byte {entry.start}, expected {position} "
                      "(overlapping or gapped offsets)")
        position = entry.end
    if data_start + position != size:
        raise bad(f"{size} bytes, the header describes {data_start + position} (truncated or "
                  "extended)")
    return Header(path, tensors, metadata, data_start, size)


def tensor_checksum(tensor: torch.Tensor) -> str:
    """xxh3-128 of a tensor's bytes, as stored."""
    return xxhash.xxh3_128(_raw(tensor)).hexdigest()


def check_tensor(header: Header, name: str, tensor: torch.Tensor) -> None:
    """A tensor read from a file written with `tensor_checksums`, against its checksum."""
    want = header.metadata.get(TENSOR_CHECKSUM_PREFIX + name)
    if want is None:
        raise TensorFileError(f"{header.path}: no checksum for tensor {name} in its header")
    if tensor_checksum(tensor) != want:
        raise TensorFileError(f"{header.path}: tensor {name} differs from its checksum "
                              "(altered or corrupted)")


def content_fingerprint(path: Path) -> str:
    """xxh3-128 over the relative name, size and bytes of `path` (a file) or of every file under
    it (a folder; names starting with a dot skipped), in name order."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts))
    digest = xxhash.xxh3_128()
    for file in files:
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{name}\0{file.stat().st_size}\0{file_checksum(file)}\n".encode())
    return digest.hexdigest()
