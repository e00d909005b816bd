"""Malformed inputs, generated from a seed (issue 22): training and curation configs (files and
--set overrides), manifests, checkpoint manifests and checkpoint files, and media files. Each must
end as a clean skip (a decoder's None, counted) or a one-line error of the kind the command line
prints (ConfigError, CheckpointError, ManifestError), never another exception and never a hang:
every case runs under a deadline.

The generator is a seeded `random.Random` (MEGAGOKU_FUZZ_SEED picks another seed; the failing
case's seed and number are in the assertion), so a failure reproduces exactly. The case counts
keep the whole file under half a minute on one core."""

from __future__ import annotations

import contextlib
import copy
import faulthandler
import hashlib
import json
import os
import random
import shutil
import signal
import string
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from megagoku.config import ConfigError, load_training_config
from megagoku.config.curate import load_curate_config
from megagoku.data.decode import MediaReader, Target
from megagoku.data.manifest import ManifestError, load_manifest
from megagoku.train.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from megagoku.train.memory_plan import check_fits
from megagoku.train.preflight import preflight

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MEGAGOKU_FUZZ_SEED", "22"))
DEADLINE_S = 20.0  # per case: a hang is a failure, not a stuck test run
ONE_LINE = (ConfigError, CheckpointError, ManifestError)


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float = DEADLINE_S):
    def expired(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    # A hang inside C code (a decoder) never returns to Python for the alarm to be raised:
    # then the whole run stops, printing where every thread was.
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def clean(case: str, run: Callable[[], Any]) -> Any:
    """`run()`'s result, or None for a one-line error; anything else fails naming the case."""
    try:
        with deadline():
            return run()
    except ONE_LINE as e:
        message = str(e)
        assert message.strip() and "\n" not in message, f"{case}: not one line: {message!r}"
        assert "Traceback" not in message, f"{case}: {message!r}"
        return None
    except Hang as e:
        pytest.fail(f"{case}: hung ({e})")
    except Exception as e:  # noqa: BLE001 - the point: nothing else may come out
        pytest.fail(f"{case}: {type(e).__name__}: {e}")


# -- values ---------------------------------------------------------------------------------------

def junk_value(rng: random.Random, depth: int = 0) -> Any:
    """A value of a random type, the kind a typo or a wrong tool writes."""
    choices = [
        lambda: None, lambda: True, lambda: rng.randint(-10 ** 6, 10 ** 6), lambda: 0,
        lambda: -1, lambda: 10 ** rng.randint(10, 40), lambda: rng.uniform(-1e3, 1e3),
        lambda: float("nan"), lambda: float("inf"), lambda: "", lambda: "auto",
        lambda: "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 12))),
        lambda: "é∂\u202e\x00x", lambda: "1e-3", lambda: "../../etc/passwd",
    ]
    if depth < 2:
        choices += [lambda: [junk_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
                    lambda: {junk_key(rng): junk_value(rng, depth + 1)
                             for _ in range(rng.randint(0, 3))}]
    return rng.choice(choices)()


def junk_key(rng: random.Random) -> str:
    return rng.choice(["", "x", "steps", "model", "__class__", "!!python/object", "a.b", "é",
                       "".join(rng.choice(string.ascii_lowercase) for _ in range(6))])


def mutate_tree(tree: Any, rng: random.Random, edits: int) -> Any:
    """A copy of a nested dict with `edits` random changes: a value replaced by junk, a key
    dropped, an unknown key added, a section replaced by a scalar."""
    tree = copy.deepcopy(tree)
    for _ in range(edits):
        node = tree
        while isinstance(node, dict) and node and rng.random() < 0.6:
            child = node[rng.choice(list(node))]
            if not isinstance(child, dict) or not child:
                break
            node = child
        if not isinstance(node, dict):
            continue
        action = rng.random()
        if action < 0.5 and node:
            node[rng.choice(list(node))] = junk_value(rng)
        elif action < 0.7 and node:
            del node[rng.choice(list(node))]
        else:
            node[junk_key(rng)] = junk_value(rng)
    return tree


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Truncated, bit-flipped, spliced with garbage, or emptied."""
    action = rng.randrange(5)
    if action == 0 or not data:
        return data[:rng.randrange(len(data) + 1)] if data else b""
    if action == 1:
        out = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if action == 2:
        at = rng.randrange(len(data))
        return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]
    if action == 3:
        return rng.randbytes(rng.randint(0, 256))
    return b""


def dump_yaml(tree: Any, rng: random.Random) -> str:
    try:
        text = yaml.safe_dump(tree, allow_unicode=True)
    except yaml.YAMLError:
        text = json.dumps(tree, default=str)
    if rng.random() < 0.15:  # broken syntax too
        text = rng.choice([text[:rng.randrange(len(text) + 1)], text.replace(":", "", 1),
                           "\t" + text, text + "\n[unclosed", "- a list\n" + text,
                           text.replace("\n", "\n  ", 3)])
    return text


# -- configs ----------------------------------------------------------------------------------

def flatten_config(path: Path) -> dict:
    """A training config with its model preset inlined (a mapping to mutate)."""
    from megagoku.config import to_dict

    return to_dict(load_training_config(path))


@pytest.mark.parametrize("which", ["training", "curation"])
def test_malformed_configs_are_one_line_errors(tmp_path, which):
    rng = random.Random(f"{SEED}-config-{which}")
    if which == "training":
        base = flatten_config(ROOT / "configs/tiny.yaml")
        load = load_training_config
    else:
        base = yaml.safe_load((ROOT / "configs/curate/tiny.yaml").read_text())
        load = load_curate_config
    loaded = 0
    for case in range(120):
        path = tmp_path / f"{case}.yaml"
        tree = mutate_tree(base, rng, rng.randint(1, 4))
        if rng.random() < 0.1:
            path.write_bytes(mutate_bytes(dump_yaml(tree, rng).encode(), rng))
        else:
            path.write_text(dump_yaml(tree, rng), encoding="utf-8")
        overrides = []
        if rng.random() < 0.3:  # --set KEY=VALUE as typed on a command line
            key = rng.choice(["train.steps", "model.depth", "data", "", "a.b.c", "train",
                              "checkpoint.every", "sample.cfg_scale", "split.similarity"])
            overrides.append(f"{key}={json.dumps(junk_value(rng), default=str)}"
                             if rng.random() < 0.8 else key)
        where = f"seed {SEED} {which} config {case}"
        config = clean(where, lambda: load(path, overrides))
        if config is None:
            continue
        loaded += 1
        if which == "training":  # what a run checks next, before any work
            inputs = clean(where, lambda: preflight(config, str(path)))
            if inputs is not None:
                clean(where, lambda: check_fits(config, inputs.device, str(path)))
    assert 0 < loaded < 120  # the generator produces good and bad configs


# -- manifests --------------------------------------------------------------------------------

def manifest_row(rng: random.Random, media: list[Path]) -> Any:
    row = {"path": str(rng.choice(media)), "caption": "a red circle moving up",
           "kind": rng.choice(["video", "image"]), "width": 16, "height": 16,
           "frames": rng.choice([1, 8]), "fps": 8.0}
    if rng.random() < 0.7:
        row = mutate_tree(row, rng, rng.randint(1, 3))
    if rng.random() < 0.05:
        row = junk_value(rng)
    return row


def test_malformed_manifests_are_one_line_errors_or_skips(tmp_path, media_files):
    rng = random.Random(f"{SEED}-manifest")
    for case in range(60):
        path = tmp_path / f"{case}{rng.choice(['.jsonl', '.jsonl', '.parquet', '.txt'])}"
        lines = []
        for _ in range(rng.randint(0, 6)):
            row = manifest_row(rng, media_files)
            try:
                lines.append(json.dumps(row, allow_nan=True))
            except (TypeError, ValueError):
                lines.append(str(row))
        text = "\n".join(lines)
        if rng.random() < 0.2:
            path.write_bytes(mutate_bytes(text.encode(), rng))
        else:
            path.write_text(text, encoding="utf-8")
        records = clean(f"seed {SEED} manifest {case}", lambda: load_manifest(path))
        if records:  # what loads must then decode or be skipped, one record at a time
            reader = MediaReader("cpu")
            for i, record in enumerate(records):
                clean(f"seed {SEED} manifest {case} record {i}", lambda: reader.read(
                    record.path, record.kind, Target(16, 16, 8 if record.kind == "video" else 1,
                                                     8.0)))


# -- media ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media_files(tmp_path_factory) -> list[Path]:
    """Valid small files of every kind the reader takes, then broken copies of them."""
    from PIL import Image

    from megagoku.data.video_io import encode_video

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(SEED)
    frames = rng.integers(0, 256, (6, 24, 32, 3), dtype=np.uint8)
    good = []
    for suffix in (".mp4", ".webm"):
        encode_video(root / f"good{suffix}", frames, 8)
        good.append(root / f"good{suffix}")
    for suffix, mode in ((".png", "RGB"), (".jpg", "RGB"), (".png", "L"), (".gif", "P")):
        path = root / f"good_{mode}{suffix}"
        Image.fromarray(frames[0]).convert(mode).save(path)
        good.append(path)
    broken = []
    pick = random.Random(f"{SEED}-media")
    for k in range(36):
        source = pick.choice(good)
        suffix = pick.choice([source.suffix] * 3 + [".mp4", ".png", ".webm", ".mov", ".jpeg"])
        path = root / f"broken_{k}{suffix}"
        path.write_bytes(mutate_bytes(source.read_bytes(), pick))
        broken.append(path)
    (root / "a_folder.mp4").mkdir()
    return good + broken + [root / "a_folder.mp4", root / "missing.mp4"]


def test_malformed_media_files_are_skips(media_files):
    reader = MediaReader("cpu")
    read = 0
    for path in media_files:
        for kind in ("video", "image"):
            # 4 frames: the good clips have 6 (an image listed as a video is a skip, case 13)
            target = Target(16, 16, 4 if kind == "video" else 1, 8.0)
            pixels = clean(f"seed {SEED} media {path.name} as {kind}",
                           lambda: reader.read(path, kind, target))
            if pixels is not None:
                assert pixels.shape[0] == 3 and pixels.shape[2:] == (16, 16), path
                assert bool(pixels.isfinite().all()), path
                read += 1
    assert read >= 6 and sum(reader.stats.skipped.values()) >= 30  # the good ones read


# -- checkpoints ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from megagoku.train.trainer import train

    run = tmp_path_factory.mktemp("run")
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "train.steps=1", "model.depth=1", "data.tokens_per_step=512", "train.max_minutes=0"])
    return train(cfg, run).checkpoint


def rehash(folder: Path, name: str) -> None:
    """Make the manifest agree with a changed file: a malformed file that passes the checksums."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_malformed_checkpoints_are_one_line_errors(tmp_path, checkpoint):
    from megagoku.inference import load_generator

    rng = random.Random(f"{SEED}-checkpoint")
    names = sorted(p.name for p in checkpoint.iterdir())
    for case in range(40):
        run = tmp_path / f"run{case}"
        folder = run / "checkpoints" / checkpoint.name
        shutil.copytree(checkpoint, folder)
        target = rng.choice(names)
        path = folder / target
        action = rng.random()
        if target == "manifest.json" or action < 0.3:  # the manifest itself
            manifest = json.loads((folder / "manifest.json").read_text())
            text = json.dumps(mutate_tree(manifest, rng, rng.randint(1, 3)), default=str)
            (folder / "manifest.json").write_bytes(
                mutate_bytes(text.encode(), rng) if rng.random() < 0.3 else text.encode())
        elif action < 0.55:  # a file changed under the manifest's checksums
            path.write_bytes(mutate_bytes(path.read_bytes(), rng))
        elif action < 0.65:
            path.unlink()
            if rng.random() < 0.5:
                path.mkdir()
        elif target in ("state.json", "config.yaml"):  # malformed but consistent
            tree = json.loads(path.read_text()) if target == "state.json" \
                else yaml.safe_load(path.read_text())
            tree = mutate_tree(tree, rng, rng.randint(1, 3))
            path.write_text(json.dumps(tree, default=str) if target == "state.json"
                            else yaml.safe_dump(tree))
            rehash(folder, target)
        else:
            path.write_bytes(mutate_bytes(path.read_bytes(), rng))
            rehash(folder, target)
        where = f"seed {SEED} checkpoint {case} ({target})"
        for source in (run, folder):
            loaded = clean(where, lambda: load_checkpoint(source, "ema"))
            if loaded is not None:  # what verifies must also build, or be one line
                clean(where, lambda: load_generator(loaded[0], loaded[1], f"{loaded[2]}"))
        clean(where, lambda: find_checkpoint(run))
