"""Checkpoints of a run: RUN_DIR/checkpoints/step_00001000/ holding

    model.safetensors   raw weights          ema.safetensors   EMA weights (used for sampling)
    config.yaml         the full training config, so a checkpoint is self-describing
    state.json          step and loader state
    manifest.json       size and sha256 of every file above, written last

A checkpoint is written under a temporary name and renamed into place once its manifest is on
disk, so a crash mid-save never leaves a directory that looks complete. Loading verifies the
manifest; `find_checkpoint(run_dir)` takes the newest valid checkpoint and says which broken ones
it passed over. (Asynchronous, resharding checkpoints with optimizer state build on this in the
training-system issue.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

FILES = ("model.safetensors", "ema.safetensors", "config.yaml", "state.json")


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor],
                    ema_state: dict[str, torch.Tensor], config: dict, state: dict) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    contiguous = lambda sd: {k: v.detach().contiguous().cpu() for k, v in sd.items()}  # noqa: E731
    save_file(contiguous(model_state), str(tmp / "model.safetensors"))
    save_file(contiguous(ema_state), str(tmp / "ema.safetensors"))
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for name in FILES}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for name in (*FILES, "manifest.json"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming the file that is missing, truncated or altered."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{manifest_path}: missing or unreadable manifest ({e})") from None
    for name, meta in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{file}: {size} bytes, manifest says {meta['bytes']}")
        if _sha256(file) != meta["sha256"]:
            raise CheckpointError(f"{file}: checksum differs from the manifest")


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (-> its newest valid checkpoint)."""
    path = Path(path)
    if (path / "manifest.json").exists() or (path / "model.safetensors").exists():
        verify_checkpoint(path)
        return path
    root = path / "checkpoints"
    candidates = sorted(root.glob("step_*"), reverse=True) if root.is_dir() else []
    if not candidates:
        raise CheckpointError(f"{path}: no checkpoint here (expected {root}/step_*)")
    for candidate in candidates:
        try:
            verify_checkpoint(candidate)
            return candidate
        except CheckpointError as e:
            log.warning("skipping broken checkpoint: %s", e)
    raise CheckpointError(f"{path}: every checkpoint is broken ({len(candidates)} tried)")


def load_checkpoint(path: str | Path, weights: str = "ema") -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(config dict, state dict of the chosen weights, checkpoint dir). No pickle is read."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    ckpt = find_checkpoint(path)
    config = yaml.safe_load((ckpt / "config.yaml").read_text())
    state = load_file(str(ckpt / f"{weights}.safetensors"))
    return config, state, ckpt
