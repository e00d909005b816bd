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
    for stale in root.glob(".tmp_step_*"):  # left by a save that crashed
        shutil.rmtree(stale, ignore_errors=True)
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
    _fsync_dir(tmp)
    # Re-saving a step: move the old copy aside first, so a good checkpoint exists at every moment.
    old = root / f".old_step_{step:08d}"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming the file that is missing, truncated or altered."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = {name: (int(manifest[name]["bytes"]), str(manifest[name]["sha256"]))
                   for name in FILES}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest_path}: missing, unreadable or incomplete manifest "
                              f"({type(e).__name__}: {e})") from None
    for name, (size, digest) in entries.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, manifest says {size}")
        if _sha256(file) != digest:
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
