"""`megagoku sample` with a prompts file: every prompt x seed lands in the folder, each file the
same as sampling that prompt and seed alone, with a progress line; bad prompt files are refused
before anything loads."""

import numpy as np
import pytest
from PIL import Image

from megagoku.cli import main
from megagoku.train.trainer import train
from tests.train.test_resume import config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(config(), path)
    return path


def frames_of(path):
    image = Image.open(path)
    return [np.asarray(image.seek(i) or image.convert("RGB")) for i in range(image.n_frames)]


def test_prompt_file_gives_every_prompt_and_seed_as_alone(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na red circle moving left\n\na blue square moving up\n")
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(run_dir), "--prompts", str(prompts), "--out",
                 str(out), "--format", "gif", "--seeds", "2", "--seed", "5", "--steps", "2",
                 "--batch", "3", "--upscale", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000_a_red_circle_moving_left_seed5.gif",
                     "000_a_red_circle_moving_left_seed6.gif",
                     "001_a_blue_square_moving_up_seed5.gif",
                     "001_a_blue_square_moving_up_seed6.gif"]
    err = capsys.readouterr().err
    assert "samples 1-3 of 4: step 2/2" in err and "samples 4-4 of 4: step 2/2" in err
    alone = tmp_path / "alone.gif"
    assert main(["sample", "--checkpoint", str(run_dir), "--prompt", "a blue square moving up",
                 "--out", str(alone), "--seed", "6", "--steps", "2", "--upscale", "1"]) == 0
    batched = frames_of(out / "001_a_blue_square_moving_up_seed6.gif")
    assert len(batched) == 8 and all(np.array_equal(a, b)
                                     for a, b in zip(batched, frames_of(alone)))


def test_bad_prompt_files_are_refused(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompts", str(empty), "--out",
                 str(tmp_path / "o")]) == 2
    assert "no prompts (one per line" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompts", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty.write_text("a red circle moving left\n")
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompts", str(empty), "--out",
                 str(tmp_path / "o.gif")]) == 2
    assert "with --prompts, --out is a folder" in capsys.readouterr().err
