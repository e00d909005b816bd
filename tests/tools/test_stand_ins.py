"""`megagoku stand-ins` (the full-width fixture): refused inputs, one line each; a folder that is
not its own is never written over; a rerun reuses the stand-ins of the same settings."""

import json
from pathlib import Path

import pytest

from megagoku.cli import main
from megagoku.config import load_training_config
from megagoku.data.cache import LatentCache
from megagoku.tools.stand_ins import MARKER

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/full_width_cpu.yaml")


def paths(tmp_path: Path) -> list[str]:
    return [f"text.encoder={tmp_path / 'te'}", f"latent.path={tmp_path / 'vae'}",
            f"data.cache={tmp_path / 'cache'}"]


def stand_ins(sets: list[str], *extra: str) -> int:
    return main(["stand-ins", "--config", CONFIG, *extra,
                 *[a for s in sets for a in ("--set", s)]])


@pytest.mark.parametrize("sets,extra,message", [
    (["data.kind=shapes"], [], "stand-ins need data.kind: cache and latent.kind: causal_vae"),
    (["text.encoder=builtin:all-minilm-l6-v2"], [], "text.encoder: stand-ins write a folder"),
    ([], ["--records", "0"], "--records: must be at least 1"),
])
def test_bad_inputs_are_one_line_each(tmp_path, capsys, sets, extra, message):
    assert stand_ins([*paths(tmp_path), *sets], *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_a_folder_that_is_not_a_stand_in_is_refused_before_anything_is_written(tmp_path, capsys):
    real = tmp_path / "vae"
    real.mkdir()
    (real / "vae.safetensors").write_bytes(b"a real VAE's weights")
    assert stand_ins(paths(tmp_path), "--records", "3") == 2
    assert f"latent.path: {real} is not empty and not a stand-in" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]
    assert (real / "vae.safetensors").read_bytes() == b"a real VAE's weights"


def test_stand_ins_train_ready_and_a_rerun_reuses_them(tmp_path, capsys):
    sets = paths(tmp_path)
    assert stand_ins(sets, "--records", "3") == 0  # two clips and an image
    config = load_training_config(CONFIG, sets)
    cache = LatentCache(config.data.cache)
    for position, frames in ((0, 3), (2, 1)):  # 9 frames: 3 latent frames (4x); an image: 1
        sample = cache.load(position)
        assert sample.latent.shape == (16, frames, 8, 8)  # 16 channels, 64 px / 8
        assert sample.text.shape[1] == 2048
    for folder in (tmp_path / "te", tmp_path / "vae", tmp_path / "cache"):
        assert json.loads((folder / MARKER).read_text())["stand_in"]
    capsys.readouterr()
    assert stand_ins(sets, "--records", "3") == 0  # the same settings: nothing rewritten
    assert "stand-ins: " not in capsys.readouterr().out
    assert stand_ins(sets, "--records", "3", "--seed", "1") == 2  # other settings: refused
    err = capsys.readouterr().err
    assert "text.encoder: " in err and "holds the stand-in of" in err
